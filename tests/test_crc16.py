"""CRC-16/IBM-SDLC against crcmod's catalogue function and the catalogue constants."""
import numpy as np
import crcmod
import crcmod.predefined
from hypothesis import given, strategies as st

from hal import crc16 as C

CATALOGUE = crcmod.predefined.mkPredefinedCrcFun("x-25")


def test_check_value_matches_catalogue():
    assert CATALOGUE(b"123456789") == C.CHECK == 0x906E
    assert C.crc16(b"123456789") == C.CHECK
    assert C.crc16_array(np.frombuffer(b"123456789", np.uint8)) == C.CHECK


def test_parameters_are_crcmods_x25():
    # crcmod.mkCrcFun takes the polynomial with its x^16 term, rev = refin = refout, and
    # an initCrc that is the register's init already XORed with xorout (crcmod's convention):
    # the catalogue function must come out of the named parameters.
    f = crcmod.mkCrcFun(0x10000 | C.POLY, initCrc=C.INIT ^ C.XOROUT, rev=C.REFIN and C.REFOUT,
                        xorOut=C.XOROUT)
    data = bytes(range(256)) * 3
    assert f(data) == CATALOGUE(data) == C.crc16(data)
    assert int(C.TABLE[128]) == C.POLY_REFLECTED     # one LSB-first step of bit 7 = the poly


def test_residue():
    # data | crc (little-endian) leaves the catalogue residue in the raw register
    for data in (b"", b"123456789", bytes(range(200))):
        c = C.crc16(data)
        frame = np.frombuffer(data + c.to_bytes(2, "little"), np.uint8)
        assert C.crc16_update(C.INIT, frame, 0, len(frame)) == C.RESIDUE


@given(st.binary(max_size=2000))
def test_numba_equals_crcmod(data):
    a = np.frombuffer(data, np.uint8)
    expect = CATALOGUE(data)
    assert C.crc16(data) == expect
    assert C.crc16_nb(a, len(a)) == expect
    assert C.crc16_nb.py_func(a, len(a)) == expect


@given(st.binary(max_size=500), st.binary(max_size=500))
def test_incremental_update(a, b):
    buf = np.frombuffer(a + b, np.uint8)
    r = C.crc16_update(C.INIT, buf, 0, len(a))
    r = C.crc16_update(r, buf, len(a), len(buf))
    assert r ^ C.XOROUT == CATALOGUE(a + b)


def test_single_double_triple_bit_errors_detected():
    # Hamming distance 4 of poly 0x1021 at this length: every 1-, 2- and 3-bit error of a
    # 64-byte codeword (data | crc) changes the check. Exhaustive over 1 and 2 bits,
    # a deterministic sample of 3-bit patterns.
    rng = np.random.default_rng(7)
    data = rng.integers(0, 256, 62, dtype=np.uint8).tobytes()
    word = bytearray(data + C.crc16(data).to_bytes(2, "little"))
    nbits = len(word) * 8

    def ok(w):
        return C.crc16(bytes(w[:-2])) == int.from_bytes(w[-2:], "little")

    assert ok(word)
    for i in range(nbits):
        w = bytearray(word)
        w[i >> 3] ^= 1 << (i & 7)
        assert not ok(w)
        for j in range(i + 1, nbits):
            w2 = bytearray(w)
            w2[j >> 3] ^= 1 << (j & 7)
            assert not ok(w2)
    for _ in range(3000):
        w = bytearray(word)
        for b in rng.choice(nbits, 3, replace=False):
            w[b >> 3] ^= 1 << (b & 7)
        assert not ok(w)
