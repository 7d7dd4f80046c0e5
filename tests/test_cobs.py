"""COBS against an independent byte-by-byte reference of the published algorithm."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from hal import cobs


def ref_encode(data: bytes) -> bytes:
    # Cheshire & Baker's StuffData, as in Wikipedia's C reference: a code byte counts the
    # data bytes that follow + 1; 0xFF ends a block without a zero; a block completed on
    # the very last input byte opens no new (empty) block.
    out = bytearray([0])
    code_i, code = 0, 1
    for k, b in enumerate(data):
        if b:
            out.append(b)
            code += 1
        if not b or code == 0xFF:
            out[code_i] = code
            code = 1
            if not b or k + 1 < len(data):
                code_i = len(out)
                out.append(0)
            else:
                code_i = None
    if code_i is not None:
        out[code_i] = code
    return bytes(out)


def ref_decode(enc: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(enc):
        code = enc[i]
        assert code != 0
        i += 1
        for _ in range(code - 1):
            out.append(enc[i])
            i += 1
        if code < 0xFF and i < len(enc):
            out.append(0)
    return bytes(out)


# Wikipedia "Consistent Overhead Byte Stuffing" encoding examples 1-11.
VECTORS = [
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
    (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255))),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
    (b"", b"\x01"),
]


@pytest.mark.parametrize("data,enc", VECTORS)
def test_published_vectors(data, enc):
    assert ref_encode(data) == enc            # the reference itself is checked first
    assert cobs.encode(data) == enc
    assert cobs.encode_array(np.frombuffer(data, np.uint8)) == enc
    assert cobs.decode(enc) == data
    assert cobs.decode_array(enc) == data


# Runs of 253..256 non-zero bytes and zeros around them hit every 0xFF block boundary.
runs = st.lists(st.one_of(st.binary(max_size=8),
                          st.integers(250, 600).map(lambda n: bytes((k % 255) + 1 for k in range(n))),
                          st.just(b"\x00")), max_size=6).map(b"".join)
payloads = st.one_of(st.binary(max_size=1200), runs)


@given(payloads)
def test_round_trip_against_reference(data):
    enc = cobs.encode(data)
    assert enc == ref_encode(data)
    assert b"\x00" not in enc
    assert len(enc) <= cobs.max_encoded_len(len(data))
    assert cobs.decode(enc) == data == ref_decode(enc)
    a = np.frombuffer(data, np.uint8)
    assert cobs.encode_array(a) == enc
    assert cobs.decode_array(enc) == data


@given(payloads)
def test_numba_kernels_equal_py_func(data):
    a = np.frombuffer(data, np.uint8)
    d1 = np.zeros(cobs.max_encoded_len(len(data)) + 3, np.uint8)
    d2 = d1.copy()
    n1 = cobs.encode_into(a, len(a), d1, 3)
    n2 = cobs.encode_into.py_func(a, len(a), d2, 3)
    assert n1 == n2 and np.array_equal(d1, d2)
    e = np.frombuffer(bytes(d1[3:n1]), np.uint8)
    o1 = np.zeros(len(e), np.uint8)
    o2 = o1.copy()
    assert cobs.decode_into(e, 0, len(e), o1) == cobs.decode_into.py_func(e, 0, len(e), o2) == len(data)
    assert o1[:len(data)].tobytes() == data


def test_encode_into_refuses_short_destination():
    a = np.ones(300, np.uint8)
    assert cobs.encode_into(a, 300, np.zeros(301, np.uint8), 0) == cobs.ERR_SPACE


@pytest.mark.parametrize("bad,msg", [
    (b"", "empty"),
    (b"\x03\x11", "runs past"),            # block claims 2 bytes, 1 present
    (b"\x02\x11\x05", "runs past"),
    (b"\x02\x00\x01", "0x00"),
    (b"\xff" + b"\x01" * 200, "runs past"),
])
def test_malformed_input_raises_cobs_error(bad, msg):
    with pytest.raises(cobs.CobsError, match=msg):
        cobs.decode(bad)
    with pytest.raises(cobs.CobsError):
        cobs.decode_array(bad)


@given(st.binary(max_size=300))
def test_decode_arbitrary_bytes_raises_only_cobs_error(data):
    try:
        out = cobs.decode(data)
    except cobs.CobsError:
        with pytest.raises(cobs.CobsError):
            cobs.decode_array(data)
    else:
        assert cobs.decode_array(data) == out
        # every valid encoding decodes to the data the reference finds
        assert ref_decode(data) == out


def test_trailing_empty_block_accepted():
    # non-canonical: a final empty block after a full 0xFF block decodes to the same data
    data = bytes(range(1, 255))
    assert cobs.decode(b"\xff" + data + b"\x01") == data
