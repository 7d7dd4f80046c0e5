"""tools.analysis against independent oracles: allantools, scipy.signal.welch,
noise theory (NIST SP1065 white PM / white FM), Parseval, math.fsum, and
each jitted kernel's .py_func."""
import math
import warnings

import allantools
import numpy as np
import pytest
import scipy.signal
from hypothesis import assume, given, strategies as st

from tools.analysis import (
    BandRms, adev, band_rms, log_bin, mdev, oadev, psd_ratio_db, residual_band,
    residual_rms, spectral_window, tau_factors, tdev, tdev_at, welch_psd,
)
from tools.analysis import allan

RTOL = 1e-9          # DESIGN section 7: same values as allantools to 1e-9


def _warm():
    x = np.arange(16, dtype=np.float64) ** 1.5
    tdev(x, 1.0)
    adev(x, 1.0)
    adev(x, 1.0, overlapping=False)


_warm()  # compile (or load from the cache) before any hypothesis example


def phase_noise(kind, n, seed, scale=1e-12):
    """Seeded phase records: white PM, random-walk phase (white FM), flicker PM."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=n)
    if kind == "white":
        x = w
    elif kind == "walk":
        x = np.cumsum(w)
    elif kind == "flicker":      # 1/f phase PSD by shaping the spectrum
        spec = np.fft.rfft(w)
        f = np.arange(spec.shape[0], dtype=np.float64)
        f[0] = 1.0
        x = np.fft.irfft(spec / np.sqrt(f), n)
    else:
        raise ValueError(kind)
    return scale * x


def allan_ref(name, x, rate, taus):
    """allantools' (taus, devs), or None where it refuses (nothing left)."""
    fn = {"tdev": allantools.tdev, "mdev": allantools.mdev,
          "oadev": allantools.oadev, "adev": allantools.adev}[name]
    try:
        t, d, _, _ = fn(x, rate=rate, data_type="phase", taus=taus)
    except UserWarning:
        return None
    return t, d


def ours(name, x, rate, taus):
    if name == "tdev":
        return tdev(x, rate, taus)
    if name == "mdev":
        return mdev(x, rate, taus)
    if name == "oadev":
        return adev(x, rate, taus)
    return adev(x, rate, taus, overlapping=False)


def assert_same_as_allantools(name, x, rate, taus, rtol=RTOL):
    ref = allan_ref(name, x, rate, taus)
    t, d = ours(name, x, rate, taus)
    if ref is None:
        assert t.shape == (0,) and d.shape == (0,)
        return
    np.testing.assert_array_equal(t, ref[0])        # same taus kept, same rounding
    np.testing.assert_allclose(d, ref[1], rtol=rtol, atol=0)


# ----------------------------------------------------------------- allantools

@pytest.mark.parametrize("kind", ["white", "walk", "flicker"])
@pytest.mark.parametrize("rate", [1.0, 7.3, 1e3, 1e5])
@pytest.mark.parametrize("taus", ["octave", "decade", "explicit"])
def test_matches_allantools(kind, rate, taus):
    x = phase_noise(kind, 3000, seed=hash((kind, rate)) % 2**32)
    if taus == "explicit":   # half-integers round to even, duplicates, out of range
        taus = np.array([1.0, 2.5, 3.5, 3.0, 10.0, 10.4, 999.0, 1000.0, 1e6, 0.2, -3.0]) / rate
    for name in ("tdev", "mdev", "oadev", "adev"):
        assert_same_as_allantools(name, x, rate, taus)


def test_matches_allantools_all_taus():
    x = phase_noise("flicker", 400, seed=5)
    for name in ("tdev", "mdev", "oadev", "adev"):
        assert_same_as_allantools(name, x, 2.0, "all")


@st.composite
def record_and_taus(draw):
    kind = draw(st.sampled_from(["white", "walk", "flicker"]))
    n = draw(st.integers(min_value=2, max_value=700))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rate = draw(st.sampled_from([1.0, 0.1, 3.7, 1e3, 1e5, 1e6]))
    if draw(st.booleans()):
        taus = draw(st.sampled_from(["octave", "decade", "log10"]))
    else:
        m = draw(st.lists(st.floats(min_value=-2.0, max_value=1.2 * n, allow_nan=False),
                          min_size=1, max_size=12))
        taus = np.array(m) / rate
    scale = draw(st.sampled_from([1e-15, 1e-9, 1.0]))
    return phase_noise(kind, n, seed, scale), rate, taus


@given(record_and_taus())
def test_matches_allantools_property(case):
    x, rate, taus = case
    for name in ("tdev", "mdev", "oadev", "adev"):
        assert_same_as_allantools(name, x, rate, taus)


@given(n=st.integers(1, 5000), rate=st.floats(1e-3, 1e7),
       taus=st.one_of(st.sampled_from(["octave", "decade", "all", "log10"]),
                      st.lists(st.floats(-10.0, 1e4, allow_nan=False), min_size=1, max_size=20)))
def test_tau_rules_equal_tau_generator(n, rate, taus):
    if taus == "all":
        n = min(n, 300)
    data = np.zeros(n)
    if isinstance(taus, list):
        taus = np.array(taus) / rate
    _, m_ref, t_ref = allantools.tau_generator(data, rate, taus=taus)
    m, t = tau_factors(n, rate, taus)
    np.testing.assert_array_equal(m, m_ref)
    np.testing.assert_array_equal(t, t_ref)


def test_dc_offset_million_points():
    """49 ns offset, 1e-17 s noise, 10**6 points: the offset must not cost precision.

    allantools itself loses ~1e-7 on this record (its MDEV cumsum runs on the
    raw 49 ns values), so the oracle is allantools on the same record with the
    offset subtracted, which is exact here (Sterbenz) and changes no deviation.
    """
    rng = np.random.default_rng(49)
    x = 49e-9 + 1e-17 * rng.normal(size=10**6)
    y = x - 49e-9
    assert np.array_equal(y + 49e-9, x)      # the subtraction lost nothing
    rate = 1e5
    t, d = tdev(x, rate, "octave")
    t_ref, d_ref, _, _ = allantools.tdev(y, rate=rate, data_type="phase", taus="octave")
    np.testing.assert_array_equal(t, t_ref)
    np.testing.assert_allclose(d, d_ref, rtol=RTOL, atol=0)
    t, a = adev(x, rate, "octave")
    t_ref, a_ref, _, _ = allantools.oadev(y, rate=rate, data_type="phase", taus="octave")
    np.testing.assert_array_equal(t, t_ref)
    np.testing.assert_allclose(a, a_ref, rtol=RTOL, atol=0)


def test_long_random_walk_with_drift_precision():
    """2**18-point random walk on a frequency offset: the prefix sums reach
    ~1e11 times a second difference. Both parts sit on a 2**-60 s grid so
    walk + line is exact in float64, and deviations are blind to a line: the
    oracle is allantools on the drift-free walk."""
    n, rate = 2**18, 1e4
    rng = np.random.default_rng(11)
    walk = np.cumsum(rng.integers(-1000, 1001, size=n)).astype(np.float64) * 2.0**-60
    line = (np.arange(n) * 2**20 + 2**40).astype(np.float64) * 2.0**-60   # 1e-12 s/sample
    x = walk + line
    assert np.array_equal(x - line, walk)
    t, d = tdev(x, rate, "octave")
    t_ref, d_ref, _, _ = allantools.tdev(walk, rate=rate, data_type="phase", taus="octave")
    np.testing.assert_array_equal(t, t_ref)
    np.testing.assert_allclose(d, d_ref, rtol=RTOL, atol=0)


def test_empty_and_tdev_at():
    x = phase_noise("white", 100, seed=1)
    t, d = tdev(x, 10.0, [5.0])            # m = 50: 3m > N - 1
    assert t.shape == (0,) and d.shape == (0,)
    assert math.isnan(tdev_at(x, 10.0, 5.0))
    t, d = tdev(x, 10.0, [0.3, 1.0])
    assert tdev_at(x, 10.0, 1.0) == d[1]
    assert tdev_at(x, 10.0, 0.26) == d[0]   # 2.6 samples -> m = 3
    t1, a1 = oadev(x, 10.0, "decade")
    t2, a2 = adev(x, 10.0, "decade")
    np.testing.assert_array_equal(a1, a2)


def test_offset_and_scale_covariance():
    """Deviations ignore a constant and scale linearly (exact scalings by 2**k)."""
    x = phase_noise("flicker", 2000, seed=3)
    for fn in (tdev, mdev, adev):
        _, d = fn(x, 100.0, "octave")
        _, d_off = fn(x + 1e-6, 100.0, "octave")
        _, d_scaled = fn(x * 2.0**-20, 100.0, "octave")
        np.testing.assert_allclose(d_off, d, rtol=1e-6)
        np.testing.assert_allclose(d_scaled, d * 2.0**-20, rtol=1e-13)


# ----------------------------------------------------- jitted kernels vs .py_func

def test_kernels_equal_py_func():
    rng = np.random.default_rng(7)
    y = 1e-9 + np.cumsum(rng.normal(size=240)) * 1e-15
    y = y - y.mean()
    ms = np.array([1.0, 2.0, 5.0, 17.0, 79.0, 80.0, 100.0])
    s, n = allan.mdev_sumsq(y, ms)
    s_py, n_py = allan.mdev_sumsq.py_func(y, ms)
    np.testing.assert_array_equal(s, s_py)
    np.testing.assert_array_equal(n, n_py)
    for overlapping in (True, False):
        s, n = allan.adev_sumsq(y, ms, overlapping)
        s_py, n_py = allan.adev_sumsq.py_func(y, ms, overlapping)
        np.testing.assert_array_equal(s, s_py)
        np.testing.assert_array_equal(n, n_py)
    hi, lo = np.empty(241), np.empty(241)
    hi_py, lo_py = np.empty(241), np.empty(241)
    allan.dd_prefix_sums(y, hi, lo)
    allan.dd_prefix_sums.py_func(y, hi_py, lo_py)
    np.testing.assert_array_equal(hi, hi_py)
    np.testing.assert_array_equal(lo, lo_py)
    for m in (1, 9):
        w, w_py = np.empty(241), np.empty(241)
        allan.window_sums(hi, lo, 3, m, 200, w)
        allan.window_sums.py_func(hi, lo, 3, m, 200, w_py)
        np.testing.assert_array_equal(w[:200], w_py[:200])
        assert allan.second_diff_sumsq(w, m, 150) == allan.second_diff_sumsq.py_func(w, m, 150)
    for a, b in ((1.0, 1e-17), (0.1, 0.2), (-3.0, 3.0 + 1e-15), (1e300, -1e284)):
        assert allan.two_sum(a, b) == allan.two_sum.py_func(a, b)


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
                min_size=1, max_size=60))
def test_dd_prefix_sums_exact(values):
    """s_hi + s_lo is the exact prefix sum (math.fsum, correctly rounded) to 1 ulp."""
    y = np.array(values)
    hi, lo = np.empty(y.shape[0] + 1), np.empty(y.shape[0] + 1)
    allan.dd_prefix_sums(y, hi, lo)
    for k in range(y.shape[0] + 1):
        exact = math.fsum(values[:k])
        assert abs((hi[k] + lo[k]) - exact) <= math.ulp(exact) + 1e-300


@given(a=st.floats(-1e300, 1e300), b=st.floats(-1e300, 1e300))
def test_two_sum_error_free(a, b):
    from fractions import Fraction
    s, e = allan.two_sum(a, b)
    assert s == a + b
    assert Fraction(s) + Fraction(e) == Fraction(a) + Fraction(b)


# ------------------------------------------------------------- noise theory

N_THEORY = 2**18
M_THEORY = np.array([1, 4, 16, 64, 256])


def bound(m):
    # Relative 1-sigma spread of these estimators, measured over 200 seeds at
    # this N, is <= 0.96 sqrt(m / N) for white PM and <= 0.7 sqrt(m / N) for
    # white FM; the bound is 4 of those units: >= 4 sigma at every m.
    return 4.0 * np.sqrt(m / N_THEORY)


def test_tdev_white_pm_theory():
    """White PM of std sigma: TDEV(m tau0) = sigma / sqrt(m), ADEV = sqrt(3) sigma / tau.

    For x_i iid, v_j sums 3m distinct samples with weights (1, -2, 1): E v^2 =
    6 m sigma^2, so Mod s_y^2 = 3 sigma^2 / (m tau^2) and TDEV^2 = sigma^2 / m
    (NIST SP1065 table 5 for white PM, tau >> tau0, exact here for any m)."""
    sigma, rate = 2.5e-17, 1e5
    x = sigma * np.random.default_rng(2024).normal(size=N_THEORY)
    t, d = tdev(x, rate, M_THEORY / rate)
    m = np.round(t * rate)
    np.testing.assert_array_equal(m, M_THEORY)
    assert np.all(np.abs(d / (sigma / np.sqrt(m)) - 1.0) < bound(m))
    t, a = adev(x, rate, M_THEORY / rate)
    assert np.all(np.abs(a / (np.sqrt(3.0) * sigma / t) - 1.0) < bound(m))


def test_tdev_white_fm_theory():
    """Random-walk phase (white FM), step std s: ADEV(m tau0) = s / (tau0 sqrt(m));
    TDEV^2 = s^2 sum_k C_k^2 / (6 m^2) with C_k the weight of step k in v_j
    (-(k+1) for k < m, 2k - 3m + 2 for m <= k < 2m, 3m - 1 - k above)."""
    s, rate = 1e-16, 1e3
    x = s * np.cumsum(np.random.default_rng(77).normal(size=N_THEORY))
    t, d = tdev(x, rate, M_THEORY / rate)
    m = np.round(t * rate).astype(np.int64)
    theory = []
    for mm in m:
        k = np.arange(3 * mm)
        c = np.where(k < mm, -(k + 1), np.where(k < 2 * mm, 2 * k - 3 * mm + 2, 3 * mm - 1 - k))
        theory.append(s * np.sqrt(np.sum(c.astype(np.float64) ** 2) / (6.0 * mm * mm)))
    assert np.all(np.abs(d / np.array(theory) - 1.0) < bound(m))
    t, a = adev(x, rate, M_THEORY / rate)
    assert np.all(np.abs(a / (s * rate / np.sqrt(m)) - 1.0) < bound(m))


# ------------------------------------------------------------------ spectra

def scipy_welch(x, rate, nperseg, window):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # scipy warns when nperseg > len(x)
        return scipy.signal.welch(x, fs=rate, window=window, nperseg=nperseg)


@pytest.mark.parametrize("window", ["hann", "hamming", "blackman", "boxcar"])
@pytest.mark.parametrize("n,nperseg", [(5000, None), (5000, 1024), (4097, 511), (100, None),
                                       (3, None), (1, None), (2**21 + 7, 4096)])
def test_welch_equals_scipy(window, n, nperseg):
    x = 1e-3 + np.cumsum(np.random.default_rng(n).normal(size=n))
    f, p = welch_psd(x, 1e5, nperseg=nperseg, window=window)
    f_ref, p_ref = scipy_welch(x, 1e5, nperseg, window)
    np.testing.assert_allclose(f, f_ref, rtol=1e-15, atol=0)
    np.testing.assert_allclose(p, p_ref, rtol=1e-9, atol=1e-12 * p_ref.max())


@given(n=st.integers(1, 3000), nperseg=st.one_of(st.none(), st.integers(1, 4000)),
       rate=st.floats(1e-2, 1e6), seed=st.integers(0, 2**32 - 1),
       window=st.sampled_from(["hann", "hamming", "blackman", "boxcar", "array"]))
def test_welch_equals_scipy_property(n, nperseg, rate, seed, window):
    x = np.random.default_rng(seed).normal(size=n) * 3.0 + 1.0
    if window == "array":
        nps = min(nperseg or 64, n)
        window = np.random.default_rng(seed + 1).uniform(0.1, 1.0, size=nps)
        nperseg = nps
    f, p = welch_psd(x, rate, nperseg=nperseg, window=window)
    f_ref, p_ref = scipy_welch(x, rate, nperseg, window)
    np.testing.assert_allclose(f, f_ref, rtol=1e-13, atol=0)
    np.testing.assert_allclose(p, p_ref, rtol=1e-9, atol=1e-12 * max(p_ref.max(), 1e-300))


def test_window_equals_scipy_get_window():
    for name in ("hann", "hamming", "blackman", "boxcar"):
        for n in (1, 2, 7, 256, 1001):
            np.testing.assert_allclose(spectral_window(name, n),
                                       scipy.signal.get_window(name, n), rtol=0, atol=1e-15)


def test_parseval():
    """sum(psd) * df = window-weighted mean square of the detrended segments."""
    n, nperseg, rate = 10_000, 1000, 250.0
    x = 5.0 + np.random.default_rng(8).normal(size=n) * 0.3
    f, p = welch_psd(x, rate, nperseg=nperseg)
    w = scipy.signal.get_window("hann", nperseg)
    hop = nperseg // 2
    powers = []
    for k in range((n - nperseg // 2) // hop):
        seg = x[k * hop:k * hop + nperseg]
        powers.append(np.sum((w * (seg - seg.mean())) ** 2) / np.sum(w * w))
    assert np.sum(p) * (f[1] - f[0]) == pytest.approx(np.mean(powers), rel=1e-12)


def test_band_rms_white_noise_variance():
    """Full-band RMS^2 of white noise of variance s^2 returns s^2.

    Statistical bound: the estimate is a mean of N samples squared, relative
    std ~ sqrt(2 / N) = 0.2 % at N = 2**19 (overlap and window only change the
    factor), 5 sigma = 1.1 %. Deterministic bias of the trapezoid + segment
    mean removal: about -1.5 / nperseg = -0.04 %."""
    s, n, rate, nperseg = 3.0, 2**19, 50.0, 4096
    x = s * np.random.default_rng(9).normal(size=n)
    f, p = welch_psd(x, rate, nperseg=nperseg)
    var = band_rms(f, p, 0.0, rate / 2) ** 2
    assert abs(var / s**2 - 1.0) < 5 * np.sqrt(2.0 / n) + 2.0 / nperseg
    # half the band holds half the power
    half = band_rms(f, p, rate / 4, rate / 2) ** 2
    assert abs(half / (s**2 / 2) - 1.0) < 5 * np.sqrt(4.0 / n) + 2.0 / nperseg


def test_band_rms_sine():
    """A sine of amplitude A reads A / sqrt(2): exactly when its cycles fit the
    segment (Hann then puts it in 3 bins), to 0.1 % off-bin."""
    rate, n, nperseg = 1e4, 2**16, 4096
    t = np.arange(n) / rate
    f0 = 50 * rate / nperseg                          # bin-centred
    x = 0.7 * np.sin(2 * np.pi * f0 * t + 0.4)
    f, p = welch_psd(x, rate, nperseg=nperseg)
    assert band_rms(f, p, f0 - 20, f0 + 20) == pytest.approx(0.7 / np.sqrt(2), rel=1e-9)
    assert band_rms(f, p, f0 + 20, rate / 2) < 1e-9
    x = 0.7 * np.sin(2 * np.pi * 1234.5678 * t)      # off-bin
    f, p = welch_psd(x, rate, nperseg=nperseg)
    assert band_rms(f, p, 1000.0, 1500.0) == pytest.approx(0.7 / np.sqrt(2), rel=1e-3)


def test_band_rms_interpolated_edges():
    """For a PSD linear in f the trapezoid with interpolated edges is exact."""
    f = np.linspace(0.0, 100.0, 101)
    p = 3.0 + 0.25 * f
    for lo, hi in ((0.0, 100.0), (10.3, 10.7), (2.5, 97.25), (-5.0, 200.0), (50.0, 50.0), (60.0, 40.0)):
        a, b = max(lo, 0.0), min(hi, 100.0)
        exact = 3.0 * (b - a) + 0.125 * (b * b - a * a) if b > a else 0.0
        assert band_rms(f, p, lo, hi) ** 2 == pytest.approx(exact, rel=1e-12, abs=1e-12)


def test_residual_rms_in_band_only():
    """In-band sine counts, DC, out-of-band sine above f_hi and a slow sine below
    f_lo do not."""
    rate = 10e3
    t = np.arange(int(20 * rate)) / rate
    x = 1e3 + 0.5 * np.sin(2 * np.pi * 100 * t + 0.3) + 10 * np.sin(2 * np.pi * 3000 * t)
    r = residual_band(x, rate, 1.0, 1e3)
    assert isinstance(r, BandRms)
    assert r.nperseg == 40_000 and r.df_hz == 0.25 and r.f_lo_resolved
    assert r.rms == pytest.approx(0.5 / np.sqrt(2), rel=1e-9)
    assert residual_rms(x, rate, 1.0, 1e3) == r.rms
    # white noise of std s over [f_lo, f_hi] holds s^2 (f_hi - f_lo) / (rate / 2);
    # N = 2e5 -> 5 sigma = 5 sqrt(2 / N') with N' ~ N / 2 in band: ~2 %
    noise = 0.01 * np.random.default_rng(4).normal(size=t.shape[0])
    slow = 0.05 * np.sin(2 * np.pi * 0.1 * t)
    got = residual_rms(noise + slow, rate, 1.0, 2500.0)
    want = 0.01 * np.sqrt((2500.0 - 1.0) / 5000.0)
    assert got == pytest.approx(want, rel=0.02)


def test_residual_rms_short_record():
    rate = 1e3
    x = np.random.default_rng(5).normal(size=1500)          # 1.5 s: df = 0.667 Hz
    r = residual_band(x, rate)
    assert r.nperseg == 1500 and not r.f_lo_resolved
    assert r.f_lo_used_hz == 1.0 and r.f_hi_used_hz == 500.0
    x = np.random.default_rng(5).normal(size=800)           # 0.8 s: df = 1.25 Hz > f_lo
    r = residual_band(x, rate)
    assert r.nperseg == 800 and not r.f_lo_resolved
    assert r.f_lo_used_hz == rate / 800
    f, p = welch_psd(x, rate, nperseg=800)
    assert r.rms == band_rms(f, p, rate / 800, 500.0)
    r = residual_band(np.random.default_rng(6).normal(size=2500), rate)   # 2.5 s
    assert r.f_lo_resolved and r.nperseg == 2500 and r.f_lo_used_hz == 1.0
    assert residual_band(np.zeros(5000), rate).rms == 0.0


def test_psd_ratio_db_and_log_bin():
    f = np.linspace(0.0, 1000.0, 1001)
    theory = 1.0 / (1.0 + f)
    meas = theory * 10 ** 0.3                               # +3 dB everywhere
    db = psd_ratio_db(f, meas, theory, (10.0, 20.0))
    assert db.shape == (11,) and np.allclose(db, 3.0, atol=1e-12)
    db = psd_ratio_db(f, meas, lambda ff: 1.0 / (1.0 + ff), f > 500.0)
    assert db.shape == (500,) and np.allclose(db, 3.0, atol=1e-12)
    fb, pb, counts = log_bin(f, meas, 10, return_counts=True)
    # oracle: a plain loop over the decade edges
    edges = 10.0 ** (np.arange(0, 32) / 10.0)
    want_f, want_p, want_n = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (f >= lo * (1 - 1e-12)) & (f < hi * (1 - 1e-12))
        if sel.any():
            want_f.append(f[sel].mean())
            want_p.append(meas[sel].mean())
            want_n.append(sel.sum())
    np.testing.assert_allclose(fb, want_f, rtol=1e-12)
    np.testing.assert_allclose(pb, want_p, rtol=1e-12)
    np.testing.assert_array_equal(counts, want_n)
    assert counts.sum() == 1000                             # DC dropped
    fb2, pb2 = log_bin(f, meas, 10)
    np.testing.assert_array_equal(pb2, pb)
