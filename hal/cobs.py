"""Consistent Overhead Byte Stuffing (Cheshire & Baker, IEEE/ACM ToN 1999), 0x00 delimiter.

COBS rewrites a message so that it contains no 0x00 byte; 0x00 then marks the
end of a frame on the wire and a receiver resynchronises at the next 0x00
after any garbage. The encoded message is a chain of blocks: a code byte c
(1..255) followed by c - 1 data bytes; every block with c < 0xFF stands for
its data followed by one 0x00, except the last block of the message. A block
with c = 0xFF carries 254 data bytes and no zero. The overhead is therefore
at most 1 + n // 254 bytes for n input bytes, and exactly 1 byte for any
message up to 254 bytes (the 40-channel ADC frame).

Canonical form (the published algorithm, Wikipedia's reference encoder): a
message that ends with a full 254-byte block gets no trailing empty 0x01
block. `decode` also accepts that non-canonical trailing 0x01.

Two implementations with identical output:
- `encode`/`decode`: bytes in, bytes out; the work is done by bytes.split /
  slicing in C, one Python step per zero byte (per block), not per byte.
- `encode_into`/`decode_into`: numba kernels on preallocated uint8 arrays,
  allocation-free, for the jitted frame encoders (hal.wire).

Malformed input to `decode` raises `CobsError` (a ValueError). The numba
`decode_into` returns a negative error code instead (numba kernels do not
raise): ERR_ZERO, ERR_TRUNCATED, ERR_EMPTY, ERR_SPACE.
"""
from __future__ import annotations

import numba
import numpy as np

MAX_BLOCK = 254                   # data bytes of a 0xFF block

ERR_EMPTY = -1                    # zero-length input (an encoded message has >= 1 byte)
ERR_ZERO = -2                     # a 0x00 inside the encoded message
ERR_TRUNCATED = -3                # a code byte claims more bytes than remain
ERR_SPACE = -4                    # destination array too small

_ERRORS = {
    ERR_EMPTY: "empty input (an encoded message is at least one code byte)",
    ERR_ZERO: "0x00 byte inside an encoded message",
    ERR_TRUNCATED: "a block runs past the end of the message",
    ERR_SPACE: "destination buffer too small",
}


class CobsError(ValueError):
    """Malformed COBS input: a zero byte inside, a truncated block, or empty."""


def max_encoded_len(n: int) -> int:
    """Worst-case encoded length (without the 0x00 delimiter) of n input bytes."""
    return n + n // MAX_BLOCK + 1


def encode(data) -> bytes:
    """COBS-encode a bytes-like object -> bytes without any 0x00 (delimiter not added)."""
    pieces = bytes(data).split(b"\x00")
    last = len(pieces) - 1
    out = bytearray()
    for k, piece in enumerate(pieces):
        m = len(piece)
        if m < MAX_BLOCK:                       # the common case: one block per piece
            out.append(m + 1)
            out += piece
            continue
        p = 0
        while m - p >= MAX_BLOCK:
            out.append(0xFF)
            out += piece[p:p + MAX_BLOCK]
            p += MAX_BLOCK
        # The remainder block also stands for the zero that ended this piece;
        # the final piece ending on a full block needs no empty block.
        if p < m or k < last:
            out.append(m - p + 1)
            out += piece[p:]
    return bytes(out)


def decode(data) -> bytes:
    """Decode one COBS-encoded message (without its 0x00 delimiter) -> bytes.

    Raises CobsError on an empty input, a 0x00 inside, or a truncated block.
    """
    data = bytes(data)
    n = len(data)
    if n == 0:
        raise CobsError(_ERRORS[ERR_EMPTY])
    if b"\x00" in data:
        raise CobsError(f"{_ERRORS[ERR_ZERO]} (offset {data.index(0)})")
    parts = []
    i = 0
    while True:
        c = data[i]
        j = i + c
        if j > n:
            raise CobsError(f"{_ERRORS[ERR_TRUNCATED]}: code 0x{c:02X} at offset {i} "
                            f"claims {c - 1} bytes, {n - i - 1} remain")
        parts.append(data[i + 1:j])
        if j == n:
            break
        if c != 0xFF:
            parts.append(b"\x00")
        i = j
    return b"".join(parts)


def error_text(code: int) -> str:
    """Meaning of a negative return code of the numba kernels."""
    return _ERRORS.get(code, f"unknown COBS error {code}")


@numba.njit(cache=True, nogil=True)
def encode_into(src, n, dst, start):
    """COBS-encode src[:n] into dst[start:]; returns the end index in dst, or ERR_SPACE.

    dst needs max_encoded_len(n) bytes from `start`. No allocation.
    """
    if start + n + n // 254 + 1 > dst.shape[0]:
        return ERR_SPACE
    code_pos = start               # where the current block's code byte goes
    o = start + 1                  # next data byte
    code = 1                       # code = data bytes in this block + 1 (1..255)
    for k in range(n):
        b = src[k]
        if b != 0:
            dst[o] = b
            o += 1
            code += 1
            if code == 0xFF:
                dst[code_pos] = code
                code = 1
                code_pos = o
                if k + 1 < n:      # a message ending on a full block gets no empty block
                    o += 1
                else:
                    return o
        else:
            dst[code_pos] = code
            code = 1
            code_pos = o
            o += 1
    dst[code_pos] = code
    return o


@numba.njit(cache=True, nogil=True)
def decode_into(src, start, stop, dst):
    """Decode the COBS message src[start:stop] into dst; returns its length or an ERR_* (< 0)."""
    if stop <= start:
        return ERR_EMPTY
    o = 0
    i = start
    nd = dst.shape[0]
    while True:
        c = np.int64(src[i])
        if c == 0:
            return ERR_ZERO
        j = i + c
        if j > stop:
            return ERR_TRUNCATED
        if o + c > nd:
            return ERR_SPACE
        for k in range(i + 1, j):
            b = src[k]
            if b == 0:
                return ERR_ZERO
            dst[o] = b
            o += 1
        if j == stop:
            return o
        if c != 0xFF:
            dst[o] = 0
            o += 1
        i = j


def encode_array(src: np.ndarray) -> bytes:
    """numba path of `encode` for a uint8 array (same output)."""
    src = np.ascontiguousarray(src, dtype=np.uint8)
    dst = np.empty(max_encoded_len(src.shape[0]), dtype=np.uint8)
    n = encode_into(src, src.shape[0], dst, 0)
    return dst[:n].tobytes()


def decode_array(src) -> bytes:
    """numba path of `decode` (same output, same CobsError)."""
    a = np.frombuffer(bytes(src), dtype=np.uint8)
    dst = np.empty(max(a.shape[0], 1), dtype=np.uint8)
    n = decode_into(a, 0, a.shape[0], dst)
    if n < 0:
        raise CobsError(error_text(n))
    return dst[:n].tobytes()
