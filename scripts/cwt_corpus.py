#!/usr/bin/env python3
"""Mints the delivery-token corpus with python-cwt, an implementation independent of ours.

Usage: cwt_corpus.py OUT_DIR NONCE_HEX MANIFEST_DIGEST_HEX

Writes one COSE_Sign1 (ES256) token per case to OUT_DIR/<case>.cwt, the list of cases to
OUT_DIR/cases.txt, and to OUT_DIR/claims.json the claims each token carries as python-cwt reads
them back (claim keys as strings, byte strings in hex) with the server's public key. The claims are those of crates/wire/src/token.rs (`claims`) for the test card
of crates/card/tests/common/mod.rs: its ICCID, its bound IMEI, the server "dm.operator.example"
whose key is the P-256 scalar SHA-256("server"), and the time NOW = 1 790 000 000. The nonce and
the manifest digest are arguments: the card's first nonce (its random generator is seeded, so
the value is fixed) and the digest of the package the test authorizes. The test
crates/card/tests/token_claims.rs prints this command with both values when they changed.

The claim map goes through python-cwt's COSE layer (`cwt.COSE.encode_and_sign`), not
`cwt.encode`: the latter fills in `exp`, `nbf` and `iat` from the wall clock when they are
absent, so a token without them (or without `nbf`) could not be made with it.
"""
import hashlib
import json
import sys
from pathlib import Path

import cbor2
import cwt
from cryptography.hazmat.primitives.asymmetric import ec

ISS, EXP, NBF, IAT, CTI = 1, 4, 5, 6, 7
NONCE, ICCID, IMEI, MANIFEST_DIGEST = -65537, -65538, -65539, -65540

NOW = 1_790_000_000
SERVER = "dm.operator.example"
CARD_ICCID = "89014103211118510720"
CARD_IMEI = "490154203237518"
CTI_VALUE = b"\xc7\x01"


def jsonable(v):
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    return v


def server_key():
    d = hashlib.sha256(b"server").digest()
    numbers = ec.derive_private_key(int.from_bytes(d, "big"), ec.SECP256R1()).public_key().public_numbers()
    return cwt.COSEKey.new({
        1: 2,  # kty EC2
        2: SERVER.encode(),  # kid: the server id, as our tokens carry it
        3: -7,  # ES256
        -1: 1,  # P-256
        -2: numbers.x.to_bytes(32, "big"),
        -3: numbers.y.to_bytes(32, "big"),
        -4: d,
    })


def base_claims(nonce, digest):
    return {
        ISS: SERVER,
        EXP: NOW + 3600,
        IAT: NOW,
        CTI: CTI_VALUE,
        NONCE: nonce,
        ICCID: CARD_ICCID,
        IMEI: CARD_IMEI,
        MANIFEST_DIGEST: digest,
    }


def cases(nonce, digest):
    """(name, what it is, claims) for every case."""

    def with_(**changes):
        c = base_claims(nonce, digest)
        for k, v in changes.items():
            c[{"exp": EXP, "nbf": NBF, "iat": IAT}[k]] = v
        return c

    def without(key):
        c = base_claims(nonce, digest)
        c[NBF] = NOW - 60  # so that "nbf absent" differs from the others
        del c[key]
        return c

    out = [
        ("valid", "every required claim, no nbf", base_claims(nonce, digest)),
        ("nbf_future", "nbf 10^8 s after the issue time", with_(nbf=NOW + 100_000_000)),
        ("nbf_past", "nbf a minute before the issue time", with_(nbf=NOW - 60)),
        ("nbf_now", "nbf equal to the issue time", with_(nbf=NOW)),
        ("exp_passed", "expired an hour before the issue time", with_(exp=NOW - 3600)),
        ("exp_at_iat", "exp equal to iat (expired on arrival)", with_(exp=NOW)),
        ("iat_after_exp", "issued after it expires", with_(iat=NOW + 7200)),
    ]
    for name, key in [("iss", ISS), ("iat", IAT), ("exp", EXP), ("cti", CTI), ("nbf", NBF),
                      ("nonce", NONCE), ("iccid", ICCID), ("imei", IMEI),
                      ("manifest_digest", MANIFEST_DIGEST)]:
        out.append((f"no_{name}", f"claim {name} absent", without(key)))
    extra = base_claims(nonce, digest)
    extra.update({
        8: {1: {1: 2}},  # cnf (RFC 8747), not used by the profile
        -65600: "private claim nobody defined",
        -70000: [1, 2, 3],
        "text-key": b"\x00",  # a text claim key (RFC 8392 §3: keys are int or tstr)
    })
    out.append(("unknown_claims", "every claim plus unknown ones", extra))
    return out


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    out_dir = Path(sys.argv[1])
    nonce, digest = bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])
    if len(nonce) != 16 or len(digest) != 32:
        sys.exit("the nonce is 16 bytes, the manifest digest 32")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = server_key()
    cose = cwt.COSE.new(alg_auto_inclusion=True, kid_auto_inclusion=True)
    index = []
    read_back = {}
    for name, what, claims in cases(nonce, digest):
        token = cose.encode_and_sign(cbor2.dumps(claims), key)
        # Our own check that the independent library reads back what it signed.
        back = cbor2.loads(cose.decode(token, key))
        assert back == claims, name
        read_back[name] = jsonable(back)
        (out_dir / f"{name}.cwt").write_bytes(token)
        index.append(f"{name}: {what}")
    public = {"x": key.to_dict()[-2].hex(), "y": key.to_dict()[-3].hex()}
    (out_dir / "claims.json").write_text(
        json.dumps({"server_key": public, "tokens": read_back}, indent=1, sort_keys=True) + "\n")
    (out_dir / "cases.txt").write_text(
        "# Delivery tokens minted by scripts/cwt_corpus.py (python-cwt); one case a line.\n"
        + "\n".join(index) + "\n")


if __name__ == "__main__":
    main()
