"""firmware.noise_shaper: error-feedback truncation of the actuator command.

Oracles: the error-feedback identity q 2**k = y + e[n] + fb[n] checked in
exact integers sample by sample (fb = floor((c1 e[n-1] + c2 e[n-2]) / 2**14),
so NTF(z) e holds exactly when the products are multiples of 2**14 and to
within one command LSB otherwise), scipy.signal.welch spectra against
|NTF(e^jw)|**2 times the measured error variance, an exact Python-integer
re-implementation, and the kernel's `.py_func` with numpy overflow trapped.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numba import njit
from scipy import signal

from firmware.noise_shaper import (FIRST_ORDER, NS_ONE, NS_SHIFT, PLAIN, notch_coefficients,
                                   shape_step)

I32_MIN, I32_MAX = -2**31, 2**31 - 1
FS = 100e3
K = 12                                    # PZT: 32-bit command -> 20-bit code


@njit(cache=True)
def run(y, k, c1, c2, lo, hi, q, e_out):
    """Shape a block on channel 1 of a 3-channel error array; record q and e[n]."""
    e = np.zeros((3, 2), np.int32)
    for n in range(y.shape[0]):
        q[n] = shape_step(y[n], k, c1, c2, e, 1, lo, hi)
        e_out[n] = e[1, 0]
    return e


def ref_shape(ys, k, c1, c2, lo, hi):
    """Exact Python-integer model of the documented algorithm."""
    e1 = e2 = 0
    qs, es = [], []
    for y in ys:
        fb = (c1 * e1 + c2 * e2) >> NS_SHIFT
        v = int(y) + fb
        q = min(max((v + (1 << (k - 1))) >> k, lo), hi)
        err = min(max((q << k) - v, -(1 << k)), 1 << k)
        e1, e2 = err, e1
        qs.append(q)
        es.append(err)
    return np.array(qs), np.array(es)


def shaped(y, c1, c2, k=K, lo=-2**19, hi=2**19 - 1):
    q = np.empty(len(y), np.int32)
    e = np.empty(len(y), np.int32)
    run(np.asarray(y, np.int32), k, c1, c2, lo, hi, q, e)
    return q.astype(np.int64), e.astype(np.int64)


def test_coefficients():
    assert NS_SHIFT == 14 and NS_ONE == 2**14
    assert PLAIN == (0, 0) and FIRST_ORDER == (-2**14, 0)
    c1, c2 = notch_coefficients(30e3, FS)
    assert c2 == 2**14
    assert c1 == round(-2 * math.cos(2 * math.pi * 0.3) * 2**14) == 10126
    assert notch_coefficients(25e3, FS) == (0, 2**14)        # fs/4: cos = 0
    for f0 in (0.0, -1.0, 50e3, 60e3, float("nan")):
        with pytest.raises(ValueError, match="noise-shaper zero"):
            notch_coefficients(f0, FS)


# ---------------------------------------------------------------- the identity

@pytest.mark.parametrize("name", ["plain", "first", "notch"])
def test_error_feedback_identity_sample_by_sample(name):
    """q 2**k - y = e[n] + floor((c1 e[n-1] + c2 e[n-2]) / 2**14) exactly;
    for plain and first order the floor is exact, so q 2**k = y + NTF(z) e
    with no residue at all; for the notch the residue of the Q2.14 product
    is in (-1, 0] command LSB (2**-12 of a DAC code)."""
    c1, c2 = {"plain": PLAIN, "first": FIRST_ORDER, "notch": notch_coefficients(30e3, FS)}[name]
    rng = np.random.default_rng(11)
    y = np.concatenate([rng.integers(-2**30, 2**30, 3000), np.full(50, 12345),
                        np.arange(-2**20, 2**20, 2**12 + 1)[:500]])
    q, e = shaped(y, c1, c2)
    e1 = np.concatenate([[0], e[:-1]])
    e2 = np.concatenate([[0, 0], e[:-2]])
    fb = (c1 * e1 + c2 * e2) >> NS_SHIFT                    # int64 floor
    np.testing.assert_array_equal(q * 2**K - y, e + fb)
    resid = q * 2**K - y - (e + (c1 * e1 + c2 * e2) / NS_ONE)    # vs the rational NTF
    assert np.all(np.abs(e) <= 2**(K - 1))                   # off the rails: rounding only
    if name in ("plain", "first"):
        assert np.all(resid == 0)
    else:
        assert np.all((resid > -1) & (resid <= 0)) and np.any(resid != 0)


def test_plain_is_round_half_up():
    y = np.array([2047, 2048, 2049, -2048, -2049, -2047, 6144, -6144, 0, I32_MAX, I32_MIN])
    q, _ = shaped(y, *PLAIN, lo=-2**30, hi=2**30)
    want = [math.floor(v / 4096 + 0.5) for v in y]
    np.testing.assert_array_equal(q, want)


# ---------------------------------------------------------------- spectra

def _psd(y, c1, c2):
    q, e = shaped(y, c1, c2)
    d = (q * 2**K - y).astype(float)
    f, p = signal.welch(d, fs=FS, nperseg=2000)
    return f, p, e.astype(float).var()


@pytest.fixture(scope="module")
def busy_command():
    # A full-scale random walk plus white noise: the truncation error is white.
    rng = np.random.default_rng(5)
    n = 2**16
    walk = np.cumsum(rng.integers(-2**22, 2**22, n))
    return np.clip(walk + rng.integers(-2**28, 2**28, n), -2**30, 2**30).astype(np.int64)


def test_notch_at_requested_frequency(busy_command):
    """The notch shaper's error is >= 20 dB below plain rounding at f0 (it
    reaches ~45 dB with 50 Hz bins), for 30 kHz and another frequency."""
    f, p_plain, _ = _psd(busy_command, *PLAIN)
    for f0 in (30e3, 12.5e3):
        f, p_notch, _ = _psd(busy_command, *notch_coefficients(f0, FS))
        i = int(np.argmin(np.abs(f - f0)))
        assert f[i] == f0
        depth_db = 10 * np.log10(p_notch[i] / p_plain[i])
        assert depth_db <= -20, depth_db
        # and it is a notch: far from f0 the shaped error is louder than plain
        j = int(np.argmin(np.abs(f - (f0 + 15e3 if f0 < 25e3 else f0 - 25e3))))
        assert p_notch[j] > p_plain[j]


@pytest.mark.parametrize("name", ["plain", "first", "notch"])
def test_shaped_spectrum_follows_ntf(name, busy_command):
    """Welch PSD of q 2**k - y equals var(e) |NTF(e^jw)|**2 2/fs (one-sided),
    band-averaged over 25 bins within 0.75 dB wherever |NTF|**2 > 0.05."""
    c1, c2 = {"plain": PLAIN, "first": FIRST_ORDER, "notch": notch_coefficients(30e3, FS)}[name]
    f, p, var_e = _psd(busy_command, c1, c2)
    assert abs(var_e / (2**(2 * K) / 12) - 1) < 0.03          # uniform rounding error
    w = 2 * np.pi * f / FS
    ntf2 = np.abs(1 + c1 / NS_ONE * np.exp(-1j * w) + c2 / NS_ONE * np.exp(-2j * w)) ** 2
    theory = var_e * ntf2 * 2 / FS
    nb = 25
    m = (len(f) - 1) // nb * nb
    pb = p[1:m + 1].reshape(-1, nb).mean(axis=1)
    tb = theory[1:m + 1].reshape(-1, nb).mean(axis=1)
    ok = tb > 0.05 * var_e * 2 / FS
    dev_db = 10 * np.log10(pb[ok] / tb[ok])
    assert np.abs(dev_db).max() < 0.75, dev_db
    if name == "first":                                       # the DC zero really is there
        assert p[1] < 1e-3 * p[len(p) // 2]


# ---------------------------------------------------------------- ranges and py_func

Y = st.one_of(st.integers(I32_MIN, I32_MAX), st.sampled_from([I32_MIN, I32_MAX, 0, -1, 2**11, -2**11]))
SHAPERS = st.one_of(st.sampled_from([PLAIN, FIRST_ORDER, (10126, 2**14), (-2**15, 2**14), (2**15, 2**14)]),
                    st.tuples(st.integers(-2**15, 2**15), st.integers(-2**14, 2**14)))


@settings(max_examples=60)
@given(ys=st.lists(Y, min_size=1, max_size=60), cc=SHAPERS, k=st.sampled_from([8, 12, 16]),
       rng_=st.tuples(st.integers(-2**20, 2**20), st.integers(-2**20, 2**20)))
def test_codes_within_range_and_exact(ys, cc, k, rng_):
    """Codes stay in [code_min, code_max] and the stored error in [-2**k, 2**k]
    for any int32 command, rails included; equal to exact integers."""
    lo, hi = min(rng_), max(rng_)
    q, e = shaped(ys, cc[0], cc[1], k=k, lo=lo, hi=hi)
    assert q.min() >= lo and q.max() <= hi
    assert np.abs(e).max() <= 2**k
    q_ref, e_ref = ref_shape(ys, k, cc[0], cc[1], lo, hi)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(e, e_ref)


@settings(max_examples=60)
@given(ys=st.lists(Y, min_size=1, max_size=20), cc=SHAPERS, k=st.sampled_from([8, 12, 16]),
       e0=st.lists(st.integers(-2**16, 2**16), min_size=6, max_size=6))
def test_jit_equals_py_func(ys, cc, k, e0):
    lo, hi = -2**19, 2**19 - 1
    ej = np.array(e0, np.int32).reshape(3, 2)
    ep = ej.copy()
    for y in ys:
        qj = _step_jit(y, k, cc[0], cc[1], ej, 2, lo, hi)
        with np.errstate(over="raise"):
            qp = shape_step.py_func(y, k, cc[0], cc[1], ep, 2, lo, hi)
        assert qj == qp
    np.testing.assert_array_equal(ej, ep)
    np.testing.assert_array_equal(ej[:2], np.array(e0, np.int32).reshape(3, 2)[:2])   # other rows untouched


@njit(cache=True)
def _step_jit(y, k, c1, c2, e, c, lo, hi):
    return shape_step(y, k, c1, c2, e, c, lo, hi)


def test_rail_does_not_wind_up():
    """Held on a rail the stored error is clamped to 2**k, so the code
    leaves the rail as soon as the command comes back in range."""
    c1, c2 = notch_coefficients(30e3, FS)
    y = np.concatenate([np.full(500, I32_MAX), np.full(5, 100 * 2**K)])
    q, e = shaped(y, c1, c2)
    assert np.all(q[:500] == 2**19 - 1)
    assert np.abs(e).max() <= 2**K
    assert np.all(np.abs(q[500:] - 100) <= 3)
