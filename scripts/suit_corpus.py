#!/usr/bin/env python3
"""Builds the SUIT corpus in crates/wire/tests/data/suit-corpus/ independently of the crate.

Every envelope is encoded here with cbor2 and signed here with `cryptography` (COSE_Sign1,
ES256, detached payload = the SUIT_Digest of the bstr-wrapped manifest, draft-ietf-suit-manifest
§8.3, RFC 9052 §4.4), under the draft's published example key (draft-example-key.pem, see
README.md in the corpus directory). Nothing of simfota's own builder is used, so the corpus
checks the processor against a second reading of the draft.

Writes <name>.suit for each case and expected.json: name -> verdict, the fields an accepted
envelope reports, or the refusal (error kind, `what`, `code`) and the card's status word.

Usage: python3 scripts/suit_corpus.py   (needs cbor2 and cryptography >= 44)
"""

import hashlib
import json
import os
import sys

import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "wire", "tests", "data", "suit-corpus")

# draft-ietf-suit-manifest numbers (draft -37).
ENV_AUTH, ENV_MANIFEST = 2, 3
M_VERSION, M_SEQ, M_COMMON = 1, 2, 3
M_VALIDATE, M_LOAD, M_INVOKE = 7, 8, 9
M_DEPENDENCY_RESOLUTION, M_PAYLOAD_FETCH, M_INSTALL, M_TEXT = 15, 16, 20, 23
C_DEPENDENCIES, C_COMPONENTS, C_SHARED = 1, 2, 4
COND_VENDOR, COND_CLASS, COND_IMAGE = 1, 2, 3
DIR_SET_INDEX, DIR_TRY_EACH, DIR_WRITE, DIR_SET_PARAMS = 12, 15, 18, 19
DIR_OVERRIDE, DIR_FETCH, DIR_COPY, DIR_INVOKE, DIR_RUN_SEQ = 20, 21, 22, 23, 32
P_VENDOR, P_CLASS, P_DIGEST, P_SLOT, P_SIZE, P_URI, P_SOURCE = 1, 2, 3, 5, 14, 21, 22
P_PRECURSOR, P_PAYLOAD_DIGEST, P_PAYLOAD_SIZE = -257, -258, -259
SHA256 = -16

# The draft examples' vendor and class ids.
VENDOR = bytes.fromhex("fa6b4a53d5ad5fdfbe9de663e4d41ffe")
CLASS = bytes.fromhex("1492af1425695e48bf429b2d51f2ab45")
OTHER_VENDOR = bytes.fromhex("00112233445566778899aabbccddeeff")
IMAGE_A = b"simfota corpus image A " * 40
IMAGE_B = b"simfota corpus image B, longer " * 50
DELTA = b"simfota corpus delta A->B " * 7
URI = "https://fw.example/a.bin"

UNSUPPORTED_SW = "6614"  # Reason::ManifestUnsupported


def sha(b):
    return hashlib.sha256(b).digest()


def digest(b):
    """bstr .cbor SUIT_Digest of `b`."""
    return cbor2.dumps([SHA256, sha(b)])


def seq(*cmds):
    """bstr .cbor SUIT_Command_Sequence."""
    return cbor2.dumps(list(cmds))


def image_params(image=IMAGE_A, vendor=VENDOR, cls=CLASS):
    return {P_VENDOR: vendor, P_CLASS: cls, P_DIGEST: digest(image), P_SIZE: len(image)}


SHARED = seq(DIR_OVERRIDE, image_params(), COND_VENDOR, 15, COND_CLASS, 15)
INSTALL = seq(DIR_OVERRIDE, {P_URI: URI}, DIR_FETCH, 2, COND_IMAGE, 15)
VALIDATE = seq(COND_IMAGE, 15)


def manifest(sequence=1, shared=SHARED, components=None, common_extra=None, **members):
    common = {C_COMPONENTS: components or [[b"\x00"]]}
    if shared is not None:
        common[C_SHARED] = shared
    if common_extra:
        common.update(common_extra)
    m = {M_VERSION: 1, M_SEQ: sequence, M_COMMON: cbor2.dumps(common)}
    names = {
        "validate": M_VALIDATE,
        "load": M_LOAD,
        "invoke": M_INVOKE,
        "dependency_resolution": M_DEPENDENCY_RESOLUTION,
        "payload_fetch": M_PAYLOAD_FETCH,
        "install": M_INSTALL,
    }
    for k, v in members.items():
        m[names[k]] = v
    return m


def sign(key, manifest_map, extra=None):
    """SUIT_Envelope_Tagged with one COSE_Sign1 ES256 authentication block (draft §8.3)."""
    wrapped = cbor2.dumps(cbor2.dumps(manifest_map))  # bstr .cbor SUIT_Manifest, head included
    suit_digest = cbor2.dumps([SHA256, sha(wrapped)])
    protected = cbor2.dumps({1: -7})
    to_sign = cbor2.dumps(["Signature1", protected, b"", suit_digest])
    der = key.sign(to_sign, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    sign1 = cbor2.CBORTag(18, [protected, {}, None, sig])
    auth = cbor2.dumps([suit_digest, cbor2.dumps(sign1)])
    env = {ENV_AUTH: auth, ENV_MANIFEST: cbor2.loads(wrapped), **(extra or {})}
    return cbor2.dumps(cbor2.CBORTag(107, env))


def fields(image=IMAGE_A, uri=URI, vendor=VENDOR, cls=CLASS, **extra):
    f = {
        "vendor_id": vendor.hex(),
        "class_id": cls.hex(),
        "image_digest": sha(image).hex(),
        "image_size": len(image),
        "uri": uri,
        "precursor_digest": None,
        "payload_digest": None,
        "payload_size": None,
    }
    f.update(extra)
    return f


def unsupported(what, code):
    return {"kind": "UnsupportedSuit", "what": what, "code": code, "card": UNSUPPORTED_SW}


def cases():
    """(name, manifest, extra envelope members, expectation, what it shows)."""
    c = []

    def accept(name, m, f, why, extra=None):
        c.append((name, m, extra, {"verdict": "accept", "fields": f}, why))

    def refuse(name, m, err, why, extra=None):
        c.append((name, m, extra, {"verdict": "refuse", "error": err}, why))

    # --- accepted -------------------------------------------------------------------------
    accept("accept-basic", manifest(install=INSTALL, validate=VALIDATE), fields(),
           "shared sequence sets the image; install fetches and checks it; validate checks it")
    accept("accept-install-overrides-digest",
           manifest(install=seq(DIR_OVERRIDE, {P_DIGEST: digest(IMAGE_B), P_SIZE: len(IMAGE_B),
                                               P_URI: URI},
                                DIR_FETCH, 2, COND_IMAGE, 15),
                    validate=seq(DIR_OVERRIDE, {P_DIGEST: digest(IMAGE_B)}, COND_IMAGE, 15)),
           fields(IMAGE_B),
           "override-parameters in install replaces the shared sequence's image (draft §8.4.10.4): B")
    accept("accept-secure-boot", manifest(validate=VALIDATE, invoke=seq(DIR_INVOKE, 2)),
           fields(uri=None), "no install sequence: the one component's shared values, no uri")
    accept("accept-policy-zero",
           manifest(shared=seq(DIR_OVERRIDE, image_params(), COND_VENDOR, 0, COND_CLASS, 0),
                    install=seq(DIR_OVERRIDE, {P_URI: URI}, DIR_FETCH, 0, COND_IMAGE, 0)),
           fields(), "reporting policy 0 (no reports) is a valid SUIT_Rep_Policy")
    accept("accept-try-each-first-option",
           manifest(shared=seq(DIR_OVERRIDE, {P_VENDOR: VENDOR, P_CLASS: CLASS},
                               DIR_TRY_EACH, [seq(DIR_OVERRIDE, {P_DIGEST: digest(IMAGE_A),
                                                                 P_SIZE: len(IMAGE_A)}),
                                              seq(DIR_OVERRIDE, {P_DIGEST: digest(IMAGE_B),
                                                                 P_SIZE: len(IMAGE_B)}),
                                              None],
                               COND_VENDOR, 15, COND_CLASS, 15),
                    install=INSTALL),
           fields(), "a try-each without conditions always takes its first option")
    accept("accept-run-sequence",
           manifest(install=seq(DIR_RUN_SEQ, seq(DIR_OVERRIDE, {P_URI: URI}),
                                DIR_FETCH, 2, COND_IMAGE, 15)),
           fields(), "run-sequence sets the uri of the current component")
    accept("accept-copy-from-staging",
           manifest(components=[[b"\x00"], [b"\x01"]],
                    shared=seq(DIR_SET_INDEX, 0, DIR_OVERRIDE, image_params(),
                               COND_VENDOR, 15, COND_CLASS, 15,
                               DIR_SET_INDEX, 1, DIR_OVERRIDE, {P_DIGEST: digest(IMAGE_A)}),
                    payload_fetch=seq(DIR_SET_INDEX, 1, DIR_OVERRIDE, {P_URI: URI},
                                      DIR_FETCH, 2, COND_IMAGE, 15),
                    install=seq(DIR_SET_INDEX, 0, DIR_OVERRIDE, {P_SOURCE: 1},
                                DIR_COPY, 2, COND_IMAGE, 15),
                    validate=seq(COND_IMAGE, 15)),
           fields(), "payload-fetch stages into component 1, install copies it to component 0")
    accept("accept-delta",
           manifest(shared=seq(DIR_OVERRIDE, {**image_params(IMAGE_B),
                                              P_PRECURSOR: digest(IMAGE_A),
                                              P_PAYLOAD_DIGEST: digest(DELTA),
                                              P_PAYLOAD_SIZE: len(DELTA)},
                               COND_VENDOR, 15, COND_CLASS, 15),
                    install=INSTALL),
           fields(IMAGE_B, precursor_digest=sha(IMAGE_A).hex(),
                  payload_digest=sha(DELTA).hex(), payload_size=len(DELTA)),
           "simfota's own negative parameters -257/-258/-259")
    sev = cbor2.dumps(INSTALL)
    accept("accept-install-severable",
           manifest(install=[SHA256, sha(sev)]), fields(),
           "install severed by digest, carried in the envelope (draft §8.4.11)",
           extra={M_INSTALL: INSTALL})
    accept("accept-install-severed-away",
           manifest(install=[SHA256, sha(sev)]), fields(uri=None),
           "install severed away: shared values only")

    # --- refused: unknown or custom commands and parameters ---------------------------------
    refuse("shared-unknown-command-at-end",
           manifest(shared=seq(DIR_OVERRIDE, image_params(), COND_VENDOR, 15, COND_CLASS, 15,
                               40, 15), install=INSTALL),
           unsupported("command", 40), "the examiner's case 1")
    refuse("validate-unknown-condition",
           manifest(install=INSTALL, validate=seq(COND_IMAGE, 15, 25, 15)),
           unsupported("command", 25), "the examiner's case 2: validate is processed too")
    refuse("shared-custom-command",
           manifest(shared=seq(DIR_OVERRIDE, image_params(), -1, None, COND_VENDOR, 15),
                    install=INSTALL),
           unsupported("custom command", -1), "the examiner's case 3")
    refuse("invoke-unknown-directive",
           manifest(install=INSTALL, invoke=seq(DIR_INVOKE, 2, 31, 2)),
           unsupported("command", 31), "swap (31) in invoke")
    refuse("load-write-directive",
           manifest(install=INSTALL, load=seq(DIR_WRITE, 15)),
           unsupported("command", 18), "write is not implemented")
    refuse("set-parameters-is-not-draft-37",
           manifest(shared=seq(DIR_SET_PARAMS, image_params(), COND_VENDOR, 15),
                    install=INSTALL),
           unsupported("command", 19), "command 19 (set-parameters of earlier drafts)")
    refuse("dependency-resolution-unknown-command",
           manifest(install=INSTALL, dependency_resolution=seq(40, 0)),
           unsupported("command", 40), "dependency-resolution is walked too")
    refuse("payload-fetch-custom-command",
           manifest(install=INSTALL, payload_fetch=seq(-300, b"x")),
           unsupported("custom command", -300), "payload-fetch is walked too")
    refuse("unknown-parameter",
           manifest(shared=seq(DIR_OVERRIDE, {**image_params(), 99: 1}, COND_VENDOR, 15),
                    install=INSTALL),
           unsupported("parameter", 99), "an unknown positive parameter")
    refuse("unknown-custom-parameter",
           manifest(shared=seq(DIR_OVERRIDE, {**image_params(), -260: 1}, COND_VENDOR, 15),
                    install=INSTALL),
           unsupported("custom parameter", -260), "a custom parameter simfota does not define")
    refuse("component-slot-parameter",
           manifest(shared=seq(DIR_OVERRIDE, {**image_params(), P_SLOT: 0}, COND_VENDOR, 15),
                    install=INSTALL),
           unsupported("parameter", 5), "component-slot (A/B selection) is not implemented")
    refuse("severable-install-unknown-command",
           manifest(install=[SHA256, sha(cbor2.dumps(seq(40, 0)))]),
           unsupported("command", 40), "a severable member is walked like an inline one",
           extra={M_INSTALL: seq(40, 0)})
    refuse("dependencies", manifest(install=INSTALL, common_extra={C_DEPENDENCIES: {0: {}}}),
           unsupported("common member", 1), "dependency manifests are not processed")

    # --- refused: nesting ----------------------------------------------------------------
    opt = seq(DIR_OVERRIDE, {P_URI: URI})
    refuse("try-each-unknown-in-second-option",
           manifest(install=seq(DIR_TRY_EACH, [opt, seq(40, 0)], DIR_FETCH, 2)),
           unsupported("command", 40), "options never taken are still checked")
    refuse("try-each-condition",
           manifest(install=seq(DIR_TRY_EACH, [seq(COND_VENDOR, 15, DIR_OVERRIDE, {P_URI: URI}),
                                              opt], DIR_FETCH, 2)),
           unsupported("condition inside try-each", 1),
           "a device-dependent choice the card cannot make")
    refuse("try-each-fetch",
           manifest(install=seq(DIR_TRY_EACH, [seq(DIR_OVERRIDE, {P_URI: URI}, DIR_FETCH, 2),
                                              opt])),
           unsupported("fallible directive inside try-each", 21),
           "a fetch that fails moves on to another option")
    refuse("try-each-one-option",
           manifest(install=seq(DIR_TRY_EACH, [opt], DIR_FETCH, 2)),
           unsupported("try-each argument", 15), "[2* bstr, ?nil]")
    refuse("run-sequence-unknown-inside",
           manifest(install=seq(DIR_RUN_SEQ, seq(DIR_OVERRIDE, {P_URI: URI}, 40, 0),
                                DIR_FETCH, 2)),
           unsupported("command", 40), "run-sequence content is walked")
    refuse("try-each-run-sequence-custom-inside",
           manifest(shared=seq(DIR_OVERRIDE, image_params(),
                               DIR_TRY_EACH, [seq(DIR_RUN_SEQ, seq(-5, None)), opt]),
                    install=INSTALL),
           unsupported("custom command", -5), "run-sequence inside try-each")
    deep = seq(DIR_OVERRIDE, {P_URI: URI})
    for _ in range(5):
        deep = seq(DIR_RUN_SEQ, deep)
    refuse("nesting-too-deep", manifest(install=seq(DIR_RUN_SEQ, deep, DIR_FETCH, 2)),
           {"kind": "TooDeep", "card": UNSUPPORTED_SW}, "nesting is bounded (card stack)")

    # --- refused: conditions and parameters in effect ------------------------------------
    refuse("vendor-condition-unset",
           manifest(shared=seq(DIR_OVERRIDE, {P_CLASS: CLASS, P_DIGEST: digest(IMAGE_A),
                                              P_SIZE: len(IMAGE_A)}, COND_VENDOR, 15),
                    install=INSTALL),
           unsupported("condition on an unset parameter", 1), "unset parameter fails")
    refuse("image-match-unset",
           manifest(shared=seq(DIR_OVERRIDE, {P_VENDOR: VENDOR, P_CLASS: CLASS},
                               COND_VENDOR, 15),
                    install=INSTALL),
           unsupported("condition on an unset parameter", 3), "no image digest")
    refuse("image-digest-only-in-another-sequence",
           manifest(shared=seq(DIR_OVERRIDE, {P_VENDOR: VENDOR, P_CLASS: CLASS}),
                    install=seq(DIR_OVERRIDE, {P_DIGEST: digest(IMAGE_A), P_URI: URI},
                                DIR_FETCH, 2, COND_IMAGE, 15),
                    validate=VALIDATE),
           unsupported("condition on an unset parameter", 3),
           "each sequence starts from the shared sequence's parameters")
    refuse("set-parameters-does-not-count",
           manifest(shared=seq(DIR_OVERRIDE, {P_VENDOR: VENDOR, P_CLASS: CLASS},
                               DIR_SET_PARAMS, {P_DIGEST: digest(IMAGE_A)}),
                    install=INSTALL),
           unsupported("command", 19), "set-parameters is refused, not read as override")
    refuse("conflicting-vendor-conditions",
           manifest(shared=seq(DIR_OVERRIDE, image_params(), COND_VENDOR, 15,
                               DIR_OVERRIDE, {P_VENDOR: OTHER_VENDOR}, COND_VENDOR, 15),
                    install=INSTALL),
           unsupported("conflicting identifier conditions", 1), "no device passes both")
    refuse("validate-checks-another-image",
           manifest(install=INSTALL,
                    validate=seq(DIR_OVERRIDE, {P_DIGEST: digest(IMAGE_B)}, COND_IMAGE, 15)),
           unsupported("image-match against another image", 3),
           "validate would refuse the image install wrote")
    refuse("image-match-before-install",
           manifest(install=seq(COND_IMAGE, 15, DIR_OVERRIDE, {P_URI: URI}, DIR_FETCH, 2)),
           unsupported("image-match on the installed component before install", 3),
           "the current image is device state (simfota uses -257 for that)")
    refuse("two-images",
           manifest(components=[[b"\x00"], [b"\x01"]],
                    shared=seq(DIR_SET_INDEX, 0, DIR_OVERRIDE, image_params(),
                               DIR_SET_INDEX, 1, DIR_OVERRIDE, image_params(IMAGE_B)),
                    install=seq(DIR_SET_INDEX, 0, DIR_OVERRIDE, {P_URI: URI}, DIR_FETCH, 2,
                                DIR_SET_INDEX, 1, DIR_OVERRIDE, {P_URI: URI}, DIR_FETCH, 2)),
           unsupported("second install directive", 21), "one authorized image per manifest")
    refuse("fetch-in-shared",
           manifest(shared=seq(DIR_OVERRIDE, {**image_params(), P_URI: URI}, DIR_FETCH, 2)),
           unsupported("directive in the shared sequence", 21), "SUIT_Shared_Sequence")
    refuse("fetch-without-uri",
           manifest(install=seq(DIR_FETCH, 2, COND_IMAGE, 15)),
           unsupported("fetch without uri", 21), "fetch needs the uri parameter")
    refuse("copy-digest-differs",
           manifest(components=[[b"\x00"], [b"\x01"]],
                    shared=seq(DIR_SET_INDEX, 0, DIR_OVERRIDE, image_params(),
                               DIR_SET_INDEX, 1, DIR_OVERRIDE, {P_DIGEST: digest(IMAGE_B)}),
                    payload_fetch=seq(DIR_SET_INDEX, 1, DIR_OVERRIDE, {P_URI: URI},
                                      DIR_FETCH, 2),
                    install=seq(DIR_SET_INDEX, 0, DIR_OVERRIDE, {P_SOURCE: 1},
                                DIR_COPY, 2)),
           unsupported("copy source digest differs from the image", 22),
           "a copy does not transform the payload")
    refuse("component-index-out-of-range",
           manifest(install=seq(DIR_SET_INDEX, 1, DIR_FETCH, 2)),
           unsupported("component index out of range", 12), "one component declared")
    refuse("component-index-true",
           manifest(install=seq(DIR_SET_INDEX, True, DIR_OVERRIDE, {P_URI: URI}, DIR_FETCH, 2)),
           unsupported("component index form", 12), "IndexArg true (all components)")

    # --- refused: argument types ---------------------------------------------------------
    for name, cmd, arg in [("policy-text", COND_VENDOR, "15"),
                           ("policy-negative", COND_CLASS, -1),
                           ("policy-unknown-bits", COND_IMAGE, 16),
                           ("policy-bstr-on-fetch", DIR_FETCH, b"\x02"),
                           ("policy-null-on-invoke", DIR_INVOKE, None)]:
        if cmd in (DIR_FETCH,):
            m = manifest(install=seq(DIR_OVERRIDE, {P_URI: URI}, cmd, arg))
        elif cmd == DIR_INVOKE:
            m = manifest(install=INSTALL, invoke=seq(cmd, arg))
        else:
            m = manifest(shared=seq(DIR_OVERRIDE, image_params(), cmd, arg), install=INSTALL)
        refuse(name, m, unsupported("reporting policy", cmd),
               "SUIT_Rep_Policy = uint .bits suit-reporting-bits")
    refuse("image-size-bstr",
           manifest(shared=seq(DIR_OVERRIDE, {**image_params(), P_SIZE: b"\x01"}),
                    install=INSTALL),
           unsupported("parameter value", 14), "image-size is a uint")
    refuse("precursor-not-a-digest",
           manifest(shared=seq(DIR_OVERRIDE, {**image_params(), P_PRECURSOR: 7}),
                    install=INSTALL),
           unsupported("parameter value", -257), "simfota's parameter is bstr .cbor SUIT_Digest")
    refuse("vendor-id-short",
           manifest(shared=seq(DIR_OVERRIDE, {**image_params(), P_VENDOR: b"short"}),
                    install=INSTALL),
           unsupported("parameter value", 1), "RFC4122_UUID = bstr .size 16")
    refuse("override-parameters-empty",
           manifest(shared=seq(DIR_OVERRIDE, {}), install=INSTALL),
           unsupported("override-parameters argument", 20), "{+ SUIT_Parameters}")
    return c


def main():
    with open(os.path.join(OUT, "draft-example-key.pem"), "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    with open(os.path.join(OUT, "pubkey.pem"), "wb") as f:
        f.write(pub)
    expected = {}
    for old in os.listdir(OUT):
        if old.endswith(".suit"):
            os.remove(os.path.join(OUT, old))
    for i, (name, m, extra, exp, why) in enumerate(cases()):
        assert name not in expected, name
        m[M_SEQ] = i + 1
        env = sign(key, m, extra)
        with open(os.path.join(OUT, name + ".suit"), "wb") as f:
            f.write(env)
        exp = dict(exp)
        exp["sequence"] = i + 1
        exp["why"] = why
        if exp["verdict"] == "accept":
            exp["card"] = "9000"
        expected[name] = exp
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(expected)} envelopes in {os.path.relpath(OUT, ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
