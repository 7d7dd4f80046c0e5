"""Counter-free, per-stream random numbers for the rig (numba).

Why not np.random inside njit: numba's np.random is one global generator per
thread, so results would depend on the order channels are visited (serial or
prange) and on how many channels share it. Here every channel owns a
xoshiro256** state (4 x uint64, one row of a state array), the common
processes (the laser) own another, so a channel's noise is a function of
(seed, channel) only.

- splitmix64: seeding / hashing (Steele, Lea, Flood 2014).
- xoshiro256**: Blackman & Vigna 2018, period 2^256 - 1.
- uniform: the top 53 bits -> [0, 1).
- normal_pair: Box-Muller, the angle drawn directly in turns (sincos_turns,
  no libm trig), radius sqrt(-2 ln u) with u in (0, 1].

All uint64 arithmetic wraps modulo 2^64: the constants are np.uint64 so numba
never promotes to float (uint64 op int64 -> float64 in numba).
"""
import math

import numpy as np
from numba import njit

from .trig import sincos_turns

_U1 = np.uint64(1)
_U5 = np.uint64(5)
_U7 = np.uint64(7)
_U9 = np.uint64(9)
_U11 = np.uint64(11)
_U17 = np.uint64(17)
_U27 = np.uint64(27)
_U30 = np.uint64(30)
_U31 = np.uint64(31)
_U45 = np.uint64(45)
_U57 = np.uint64(57)
_U64 = np.uint64(64)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SM1 = np.uint64(0xBF58476D1CE4E5B9)
_SM2 = np.uint64(0x94D049BB133111EB)
_INV_2_53 = 1.0 / 9007199254740992.0


@njit(cache=True)
def splitmix64(x):
    """One splitmix64 output for counter x (uint64 -> uint64): a bijective hash."""
    z = x + _GOLDEN
    z = (z ^ (z >> _U30)) * _SM1
    z = (z ^ (z >> _U27)) * _SM2
    return z ^ (z >> _U31)


@njit(cache=True)
def _rotl(x, k):
    return (x << k) | (x >> (_U64 - k))


@njit(cache=True)
def next_u64(s, row):
    """Next xoshiro256** output of the stream in s[row, 0:4] (advanced in place)."""
    s0 = s[row, 0]
    s1 = s[row, 1]
    s2 = s[row, 2]
    s3 = s[row, 3]
    result = _rotl(s1 * _U5, _U7) * _U9
    t = s1 << _U17
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, _U45)
    s[row, 0] = s0
    s[row, 1] = s1
    s[row, 2] = s2
    s[row, 3] = s3
    return result


@njit(cache=True)
def uniform(s, row):
    """Uniform float64 in [0, 1) with 53 random bits."""
    return float(next_u64(s, row) >> _U11) * _INV_2_53


@njit(cache=True)
def normal_pair(s, row):
    """Two independent N(0, 1) draws (Box-Muller)."""
    u = 1.0 - uniform(s, row)              # (0, 1]: log never sees 0
    v = uniform(s, row)                    # angle in turns
    r = math.sqrt(-2.0 * math.log(u))
    sn, cs = sincos_turns(v)
    return r * cs, r * sn


def seed_streams(seed: int, stream_ids) -> np.ndarray:
    """xoshiro256** states (len(stream_ids), 4) uint64 from (seed, stream id).

    Each state word is splitmix64 of a hash of (seed, id, word), so a stream
    depends on its own id only (a channel's noise does not change with the
    number of channels). Never all-zero (splitmix64 is a bijection and the
    four inputs differ).
    """
    ids = np.asarray(stream_ids, dtype=np.uint64)
    out = np.empty((ids.size, 4), dtype=np.uint64)
    base = _py_splitmix64(int(seed) & 0xFFFFFFFFFFFFFFFF)
    for n, sid in enumerate(ids.tolist()):
        h = _py_splitmix64(base ^ _py_splitmix64(int(sid)))
        for w in range(4):
            out[n, w] = _py_splitmix64((h + w) & 0xFFFFFFFFFFFFFFFF)
    return out


_MASK = 0xFFFFFFFFFFFFFFFF


def _py_splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


# --- ziggurat normal sampler -------------------------------------------------
# Marsaglia & Tsang, J. Stat. Softw. 5(8) (2000), 256 layers, with Doornik's
# (2005) fix of independent bits: one 64-bit draw gives the layer (bits 0-7),
# the sign (bit 8) and a 53-bit uniform (bits 11-63). About 99 % of draws end
# at the first comparison (no log, no exp), 4-10x faster than Box-Muller.
_ZIG_N = 256
_ZIG_R = 3.6541528853610088          # start of the tail
_ZIG_V = 0.00492867323399            # area of each layer (and base + tail)


def _zig_tables():
    f = lambda x: np.exp(-0.5 * x * x)
    x = np.empty(_ZIG_N + 1)
    x[0] = _ZIG_V / f(_ZIG_R)        # virtual width of the base layer
    x[1] = _ZIG_R
    for i in range(1, _ZIG_N - 1):
        x[i + 1] = np.sqrt(-2.0 * np.log(_ZIG_V / x[i] + f(x[i])))
    x[_ZIG_N] = 0.0
    return x, f(x)


_ZX, _ZF = _zig_tables()
_U8 = np.uint64(8)
_M8 = np.uint64(0xFF)


@njit(cache=True)
def normal(s, row):
    """One N(0, 1) draw (ziggurat) from the stream s[row]."""
    while True:
        u = next_u64(s, row)
        i = int(u & _M8)
        neg = ((u >> _U8) & _U1) != np.uint64(0)
        x = float(u >> _U11) * _INV_2_53 * _ZX[i]
        if x < _ZX[i + 1]:
            return -x if neg else x
        if i == 0:
            # tail beyond R (Marsaglia 1964)
            while True:
                xt = -math.log(1.0 - uniform(s, row)) / _ZIG_R
                yt = -math.log(1.0 - uniform(s, row))
                if 2.0 * yt > xt * xt:
                    break
            x = _ZIG_R + xt
            return -x if neg else x
        y = _ZF[i + 1] + uniform(s, row) * (_ZF[i] - _ZF[i + 1])
        if y < math.exp(-0.5 * x * x):
            return -x if neg else x


@njit(cache=True)
def _normal_slow(s, row, i, u):
    """Ziggurat rejection path of `normals4` (about 1 % of draws): finish the
    draw that fell outside its rectangle, then ziggurat as usual."""
    neg = ((u >> _U8) & _U1) != np.uint64(0)
    x = float(u >> _U11) * _INV_2_53 * _ZX[i]
    if i == 0:
        while True:
            xt = -math.log(1.0 - uniform(s, row)) / _ZIG_R
            yt = -math.log(1.0 - uniform(s, row))
            if 2.0 * yt > xt * xt:
                break
        x = _ZIG_R + xt
        return -x if neg else x
    y = _ZF[i + 1] + uniform(s, row) * (_ZF[i] - _ZF[i + 1])
    if y < math.exp(-0.5 * x * x):
        return -x if neg else x
    return normal(s, row)


@njit(cache=True, inline="always")
def _zig_fast(s, row, u):
    """One ziggurat draw from the 64-bit word u (rectangle test inline)."""
    i = int(u & _M8)
    x = float(u >> _U11) * _INV_2_53 * _ZX[i]
    if x < _ZX[i + 1]:
        return -x if ((u >> _U8) & _U1) != np.uint64(0) else x
    return _normal_slow(s, row, i, u)


@njit(cache=True)
def normals4(s, row):
    """Four N(0, 1) draws: the same numbers as four calls of `normal` (the
    xoshiro state is advanced four times, then the ziggurat runs on the
    words; a rejection draws its extra words from the stream after them, so
    the sequence differs from four `normal` calls only when a rejection
    occurs, which is why the kernels use this function throughout)."""
    u0 = next_u64(s, row)
    u1 = next_u64(s, row)
    u2 = next_u64(s, row)
    u3 = next_u64(s, row)
    return (_zig_fast(s, row, u0), _zig_fast(s, row, u1),
            _zig_fast(s, row, u2), _zig_fast(s, row, u3))
