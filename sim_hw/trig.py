"""sincos of an angle given in turns, for the rig's hot loops.

The rig's phases are kept in turns (round-trip turns, DDS turns), so the range
reduction is exact and free: subtract the nearest quarter turn, leaving
|y| <= 1/8 turn = pi/4 rad, where the Taylor series of sin to degree 15 and
of cos to degree 16 truncate below 5e-17 (next terms (pi/4)^17/17! = 4.6e-17,
(pi/4)^18/18! = 2e-18). Then rotate by the quarter-turn index. No libm call;
the error against numpy is that of the float64 fraction of x (x - 0.25*q is
exact for |x| < 2^50 turns), i.e. a few 1e-16 for |x| <= 1 and growing as
eps*|x| beyond, same as any float64 argument.
"""
import math

from numba import njit

_TWO_PI = 2.0 * math.pi

# Taylor coefficients of sin(t)/t and cos(t) in t^2.
_S3 = -1.0 / 6.0
_S5 = 1.0 / 120.0
_S7 = -1.0 / 5040.0
_S9 = 1.0 / 362880.0
_S11 = -1.0 / 39916800.0
_S13 = 1.0 / 6227020800.0
_S15 = -1.0 / 1307674368000.0
_C2 = -0.5
_C4 = 1.0 / 24.0
_C6 = -1.0 / 720.0
_C8 = 1.0 / 40320.0
_C10 = -1.0 / 3628800.0
_C12 = 1.0 / 479001600.0
_C14 = -1.0 / 87178291200.0
_C16 = 1.0 / 20922789888000.0


@njit(cache=True)
def sincos_turns(x):
    """(sin, cos) of 2*pi*x, x in turns (float64, any finite value)."""
    q = math.floor(4.0 * x + 0.5)          # nearest quarter turn
    y = x - 0.25 * q                       # |y| <= 1/8 turn, exact for |x| < 2^50
    t = _TWO_PI * y
    t2 = t * t
    s = t * (1.0 + t2 * (_S3 + t2 * (_S5 + t2 * (_S7 + t2 * (_S9 + t2 * (
        _S11 + t2 * (_S13 + t2 * _S15)))))))
    c = 1.0 + t2 * (_C2 + t2 * (_C4 + t2 * (_C6 + t2 * (_C8 + t2 * (
        _C10 + t2 * (_C12 + t2 * (_C14 + t2 * _C16)))))))
    # rotate by k quarter turns without branches (k & 1 swaps, k & 2 negates):
    # k=0 (s, c), 1 (c, -s), 2 (-s, -c), 3 (-c, s)
    k = int(q) & 3
    sw = float(k & 1)
    sg = 1.0 - float(k & 2)
    return sg * (s + sw * (c - s)), sg * (c - sw * (s + c))


@njit(cache=True)
def sinc_pi(x):
    """sin(pi x)/(pi x), 1 at 0 (the amplitude kept by averaging a phasor
    over a linear phase ramp of x turns)."""
    if abs(x) < 1e-4:
        px = math.pi * x
        return 1.0 - px * px / 6.0
    s, _ = sincos_turns(0.5 * x)
    return s / (math.pi * x)
