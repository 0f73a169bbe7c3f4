"""Independent checks of simfota objects with pycose, python-cwt and cbor2.

Usage: check.py COMMAND ARGS...  (hex arguments; prints results as JSON on success,
exits non-zero with a message on any failure)
"""
import hashlib
import json
import sys

import cbor2
import cwt
from pycose.keys import EC2Key
from pycose.keys.curves import P256
from pycose.messages import CoseMessage


def pub(x, y):
    return EC2Key(crv=P256, x=bytes.fromhex(x), y=bytes.fromhex(y))


def cwt_key(x, y, d=None, kid=None):
    k = {1: 2, -1: 1, -2: bytes.fromhex(x), -3: bytes.fromhex(y), 3: -7}
    if kid is not None:
        k[2] = kid
    if d:
        k[-4] = bytes.fromhex(d)
    return cwt.COSEKey.new(k)


def jsonable(v):
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, cbor2.CBORTag):
        return {"tag": v.tag, "value": jsonable(v.value)}
    return v


def sign1(data, x, y):
    msg = CoseMessage.decode(data)
    msg.key = pub(x, y)
    if not msg.verify_signature():
        raise SystemExit("pycose: signature does not verify")
    return msg


def cmd_token(token, x, y):
    data = bytes.fromhex(token)
    sign1(data, x, y)
    # python-cwt matches the key by the message's kid (our tokens carry the server id there).
    kid = cbor2.loads(data).value[1].get(4)
    claims = cwt.decode(data, cwt_key(x, y, kid=kid))
    print(json.dumps(jsonable(claims)))


def cmd_sign1(obj, x, y):
    data = bytes.fromhex(obj)
    msg = sign1(data, x, y)
    print(json.dumps(jsonable(cbor2.loads(msg.payload))))


def cmd_export(obj, x, y, sx, sy, sd):
    data = bytes.fromhex(obj)
    outer = sign1(data, x, y)
    enc = CoseMessage.decode(outer.payload)
    rcpt = enc.recipients[0]
    rcpt.key = EC2Key(crv=P256, x=bytes.fromhex(sx), y=bytes.fromhex(sy), d=bytes.fromhex(sd))
    plain = enc.decrypt(rcpt)
    body = cbor2.loads(plain)
    records = [cbor2.loads(r) for r in body[4]]
    heads = [hashlib.sha256(r).hexdigest() for r in body[4]]
    print(json.dumps({"body": jsonable(body), "records": jsonable(records), "hashes": heads}))


def cmd_suit(obj, x, y):
    env = cbor2.loads(bytes.fromhex(obj))
    assert env.tag == 107, "envelope tag"
    auth = cbor2.loads(env.value[2])
    suit_digest = auth[0]
    alg, digest = cbor2.loads(suit_digest)
    assert alg == -16
    manifest_wrapped = cbor2.dumps(env.value[3])
    assert hashlib.sha256(manifest_wrapped).digest() == digest, "manifest digest"
    msg = CoseMessage.decode(auth[1])
    msg.key = pub(x, y)
    if not msg.verify_signature(detached_payload=suit_digest):
        raise SystemExit("pycose: SUIT signature does not verify")
    manifest = cbor2.loads(env.value[3])
    print(json.dumps({"sequence": manifest[2], "digest": digest.hex()}))


def cmd_mktoken(x, y, d, exp, tagged="0"):
    claims = {
        # nbf given: python-cwt would otherwise add one of its own, at the current second.
        1: "py.dm.example", 4: int(exp), 5: int(exp) - 600, 6: int(exp) - 600, 7: b"py-upd",
        -65537: bytes(range(16)), -65538: "89014103211118510720",
        -65539: "490154203237518", -65540: bytes([0xcd] * 32),
    }
    print(cwt.encode(claims, cwt_key(x, y, d), tagged=(tagged == "1")).hex())


def cmd_mksign1(x, y, d, payload):
    from pycose.messages import Sign1Message
    from pycose.headers import Algorithm
    from pycose.algorithms import Es256
    msg = Sign1Message(phdr={Algorithm: Es256}, payload=bytes.fromhex(payload))
    msg.key = EC2Key(crv=P256, x=bytes.fromhex(x), y=bytes.fromhex(y), d=bytes.fromhex(d))
    print(msg.encode().hex())


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1]](*sys.argv[2:])
