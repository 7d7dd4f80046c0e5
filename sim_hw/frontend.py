"""Photodiode / I/Q ADC front end primitives (numba, scalar in, scalar out).

- `quantise(x, lo, hi)`: round to nearest (half up) and clip to the ADC rails;
  returns (code, clipped).
- `garbage(key, k, lo, hi)`: what a glitching ADC returns at tick k on the
  channel whose own key is `key` (the rig gives every channel one:
  `channel_garbage_keys`): a splitmix64 hash of (key, k), so the garbage is reproducible
  and does not consume the channel's noise stream (a glitch leaves the later
  noise of the channel unchanged). Top bit set: both quadratures at a rail
  (sign from the hash), else uniformly random int16 codes.
"""
import math

import numpy as np
from numba import njit

from .rng import splitmix64

_U16 = np.uint64(16)
_U63 = np.uint64(63)
_M16 = np.uint64(0xFFFF)
_Z = np.uint64(0)


@njit(cache=True)
def quantise(x, lo, hi):
    """(round(x) clipped to [lo, hi], 1 if clipped else 0), as float."""
    v = math.floor(x + 0.5)
    if v > hi:
        return hi, 1
    if v < lo:
        return lo, 1
    return v, 0


@njit(cache=True)
def garbage(key, k, lo, hi):
    """(i, q, rail) garbage codes of a glitching ADC (floats, int16 range)."""
    h = splitmix64(key ^ np.uint64(k))
    xi = float(np.int16(np.uint16(h & _M16)))
    xq = float(np.int16(np.uint16((h >> _U16) & _M16)))
    if (h >> _U63) != _Z:
        xi = hi if xi >= 0 else lo
        xq = hi if xq >= 0 else lo
    rail = 1 if (xi >= hi or xi <= lo or xq >= hi or xq <= lo) else 0
    return xi, xq, rail


def channel_garbage_keys(key, n_channels):
    """uint64[N]: each channel's garbage key, key ^ (channel << 40). Per channel
    (not one key and the channel number) so that any subset of channels,
    e.g. a block of a threaded co-simulation, glitches as in the whole rig."""
    return np.array([int(key) ^ (c << 40) for c in range(n_channels)], np.uint64)
