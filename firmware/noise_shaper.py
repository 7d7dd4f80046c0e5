"""Noise-shaped truncation of a 32-bit actuator command to a DAC's width.

The servo computes in 32-bit actuator units; the PZT DAC has 20 bits, so 12
bits are dropped (one DAC LSB = 4 ps / 2**20 = 3.8 as of one-way delay). Plain
truncation leaves white error of 3.8/sqrt(12) = 1.1 as RMS, and the piezo's
Q = 10 resonance at 30 kHz multiplies what falls near it by 10. Error feedback
moves the error out of the band where it does harm:

    v[n] = y[n] + c1 e[n-1] + c2 e[n-2]      q[n] = round(v[n] / 2**k)
    e[n] = q[n] 2**k - v[n]                  =>  q 2**k = y + NTF(z) e
    NTF(z) = 1 + c1 z^-1 + c2 z^-2

c1 = -2 cos(w0), c2 = 1 puts a zero of the noise transfer function at w0 (the
default: the actuator resonance). c1 = -1, c2 = 0 is first-order shaping (a
zero at DC, where the loop already suppresses the error); c1 = c2 = 0 is
plain rounding. Below the loop bandwidth the servo sees and removes DAC error
anyway, so the zero belongs where the loop cannot act.

Fixed point: c1, c2 in Q2.14 (|c| <= 2 -> 16 bit), e in [-2**k, 2**k] (13 bit
for k = 12): products <= 29 bit, the sum fits int64 trivially. On a rail the
error is clamped to +-2**k so the shaper cannot wind up.
"""
import numpy as np
from numba import njit

NS_SHIFT = 14
NS_ONE = 1 << NS_SHIFT


@njit(cache=True, inline="always")
def shape_core(y, drop_bits, c1, c2, e1, e2, code_min, code_max):
    """The shaper's arithmetic: (signed DAC code, new error e[n]) from the
    command y (int32) and the last two errors e1 = e[n-1], e2 = e[n-2].
    Branch-free (min/max), so a loop over channels that inlines it vectorises.
    """
    # c1, c2: 16 bit x e: 13 bit (k = 12) -> 29 bit; the shift floors
    fb = (np.int64(c1) * np.int64(e1) + np.int64(c2) * np.int64(e2)) >> NS_SHIFT
    v = np.int64(y) + fb                                      # 32 bit + 15 bit
    q = (v + (np.int64(1) << (drop_bits - 1))) >> drop_bits   # round half up
    q = min(max(q, np.int64(code_min)), np.int64(code_max))
    lim = np.int64(1) << drop_bits
    err = min(max((q << drop_bits) - v, -lim), lim)           # a rail cannot wind it up
    return q, err


@njit(cache=True, inline="always")
def shape_step(y, drop_bits, c1, c2, e, c, code_min, code_max):
    """y: int32 command; e: int32[N, 2] error histories, row c updated in place.
    Returns the DAC code.

    The code is offset binary by the caller; this returns the signed code
    (y scaled by 2**-drop_bits) clamped to [code_min, code_max].
    """
    q, err = shape_core(y, drop_bits, c1, c2, e[c, 0], e[c, 1], code_min, code_max)
    e[c, 1] = e[c, 0]
    e[c, 0] = np.int32(err)
    return np.int32(q)


def notch_coefficients(f0_hz: float, rate_hz: float):
    """(c1, c2) in Q2.14 for an NTF zero pair at f0_hz."""
    if not (0.0 < f0_hz < rate_hz / 2):
        raise ValueError(f"noise-shaper zero {f0_hz} Hz must lie in (0, {rate_hz / 2}) Hz")
    c1 = -2.0 * np.cos(2 * np.pi * f0_hz / rate_hz)
    return int(round(c1 * NS_ONE)), NS_ONE


FIRST_ORDER = (-NS_ONE, 0)
PLAIN = (0, 0)
