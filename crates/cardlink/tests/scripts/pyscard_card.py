#!/usr/bin/python3
"""A third-party PC/SC client (pyscard) against the simfota card.

Usage: pyscard_card.py READER SERVER_ID
Reads the authorized-server list (GET DATA 0102, following 61xx with GET RESPONSE), checks that
SERVER_ID is listed, then verifies the right PIN (9000, try counter back to 3) and runs the
wrong-PIN sequence to blocking: 63C2, 63C1, 63C0, then 6983 even for the right PIN (the card under test has 3 PIN tries and PIN 1234). Prints one line per
step; exits non-zero on the first unexpected answer.
"""
import sys

from smartcard.System import readers

AID = [0xF0, 0x73, 0x69, 0x6D, 0x66, 0x6F, 0x74, 0x61, 0x01]


def transmit(conn, apdu):
    data, sw1, sw2 = conn.transmit(apdu)
    while sw1 == 0x61:
        more, sw1, sw2 = conn.transmit([0x00, 0xC0, 0x00, 0x00, sw2])
        data += more
    return data, (sw1 << 8) | sw2


def cbor_head(b, i):
    """(major type, argument, next index) of the CBOR item head at b[i] (RFC 8949 §3)."""
    major, info = b[i] >> 5, b[i] & 0x1F
    if info < 24:
        return major, info, i + 1
    size = {24: 1, 25: 2, 26: 4, 27: 8}[info]
    return major, int.from_bytes(bytes(b[i + 1:i + 1 + size]), "big"), i + 1 + size


def servers(b):
    """Decodes [* [tstr id, bstr key, uint rights]]."""
    major, count, i = cbor_head(b, 0)
    assert major == 4, "server list is not an array"
    out = []
    for _ in range(count):
        major, n, i = cbor_head(b, i)
        assert major == 4 and n == 3, "server entry is not a 3-array"
        major, n, i = cbor_head(b, i)
        assert major == 3
        sid = bytes(b[i:i + n]).decode()
        i += n
        major, n, i = cbor_head(b, i)
        assert major == 2 and n == 65, "server key is not a 65-byte SEC1 point"
        key = bytes(b[i:i + n])
        i += n
        major, rights, i = cbor_head(b, i)
        assert major == 0
        out.append((sid, key, rights))
    return out


def expect(step, got, want):
    print(f"{step}: {got:04X}")
    if got != want:
        print(f"unexpected status for {step}: {got:04X}, expected {want:04X}")
        sys.exit(1)


def main():
    reader_name, server_id = sys.argv[1], sys.argv[2]
    matching = [r for r in readers() if str(r) == reader_name]
    if not matching:
        print(f"no reader {reader_name}")
        sys.exit(2)
    conn = matching[0].createConnection()
    conn.connect()
    _, sw = transmit(conn, [0x00, 0xA4, 0x04, 0x00, len(AID)] + AID + [0x00])
    expect("select", sw, 0x9000)
    data, sw = transmit(conn, [0x80, 0xCA, 0x01, 0x02, 0x00])
    expect("servers", sw, 0x9000)
    listed = servers(data)
    for sid, key, rights in listed:
        print(f"server {sid} rights {rights} key {key.hex()}")
    if server_id not in [s for s, _, _ in listed]:
        print(f"{server_id} is not listed")
        sys.exit(1)
    wrong = [0x00, 0x20, 0x00, 0x81, 0x08] + list(b"0000") + [0xFF] * 4
    right = [0x00, 0x20, 0x00, 0x81, 0x08] + list(b"1234") + [0xFF] * 4
    _, sw = transmit(conn, right)
    expect("right PIN (restores the try counter)", sw, 0x9000)
    for left in (2, 1, 0):
        _, sw = transmit(conn, wrong)
        expect(f"wrong PIN, {left} left", sw, 0x63C0 | left)
    _, sw = transmit(conn, right)
    expect("right PIN after blocking", sw, 0x6983)
    _, sw = transmit(conn, [0x00, 0x20, 0x00, 0x81])
    expect("PIN status", sw, 0x6983)
    print("ok")


main()
