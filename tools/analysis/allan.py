"""TDEV, MDEV and ADEV of phase (time-error) records, equal to allantools.

Phase x_i in seconds at rate_hz (tau0 = 1 / rate_hz), tau = m tau0, N samples.

  MDEV:  Mod s_y^2(tau) = sum_j v_j^2 / (2 m^2 tau^2 n),  n = N - 3m + 1
         v_j = sum_{i=j}^{j+m-1} (x_{i+2m} - 2 x_{i+m} + x_i)
  TDEV:  s_x(tau) = tau Mod s_y(tau) / sqrt(3)           (NIST SP1065 eq. 15)
  ADEV:  s_y^2(tau) = sum_j d_j^2 / (2 n tau^2),  d_j = x_{j+2m} - 2 x_{j+m} + x_j
         overlapping (default, = allantools.oadev): j = 0, 1, ..., n = N - 2m
         non-overlapping (= allantools.adev): j = 0, m, 2m, ..., n = ceil((N - 2m) / m)

These are the overlapping estimators of NIST SP1065 (MDEV and TDEV are
overlapping by construction). Note that allantools' *function* `adev` is the
non-overlapping one; ours defaults to the overlapping estimator (better
confidence, what stability plots use) and takes `overlapping=False` for the
other. Tau list rules and the dropping of n <= 1 points: see `taus.py`.

Cost and precision. v_j is a difference of three m-sample window sums
W_j = S_{j+m} - S_j of the prefix sum S, so each tau costs O(N) whatever m
(allantools' MDEV also runs O(N) per tau, through a numpy cumsum of the
third difference, several passes over N-element temporaries). Prefix sums
cancel badly: a 10**6-point random walk has |S| ~ 10**9 step sizes while a
second difference is ~ 1 step, and a phase record sitting on a 49 ns offset
with 1e-17 s noise has |S| ~ 5e-2 s. Two measures keep every v_j to ~1e-15
relative:
  1. the record's mean is subtracted first. For offset-dominated data this is
     EXACT: x_i and the mean are within a factor 2 of each other, so
     x_i - mean has no rounding (Sterbenz), and the result is the noise plus
     a constant below one ulp of the offset. Every deviation here is blind to
     a constant, so nothing else changes.
  2. S is kept as an unevaluated double-double (hi + lo, ~106 bits): hi is the
     running float sum, lo collects the exact rounding error of every add
     (TwoSum). W_j takes hi_{j+m} - hi_j with TwoSum too, so W_j carries
     ~1e-16 relative error plus ~1e-32 |S|.
(allantools itself loses ~1e-7 relative on that offset record, as its
cumsum runs on the raw values; the tests therefore compare with allantools on
the offset-free record, which is the same record for every deviation.)
ADEV needs no prefix sums; d_j is formed as (x_{j+2m} - x_{j+m}) - (x_{j+m} - x_j),
whose inner differences are exact for offset-dominated data.
Sums of squares use four interleaved accumulators (independent add chains);
worst-case relative rounding N eps = 2e-10 at N = 10**6, typically 1e-13.
"""
import numpy as np
from numba import njit

from .taus import tau_factors

SQRT3 = np.sqrt(3.0)


@njit(cache=True, inline="always")
def two_sum(a, b):
    """Knuth's TwoSum: s = fl(a + b) and e with a + b = s + e exactly."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


@njit(cache=True)
def dd_prefix_sums(y, s_hi, s_lo):
    """Double-double prefix sums: S_k = sum(y[:k]) = s_hi[k] + s_lo[k].

    y: float64[N]; s_hi, s_lo: float64[N + 1] outputs (s_*[0] = 0).
    s_hi is the plain running float sum; s_lo accumulates the exact rounding
    error of each add, so s_hi + s_lo is exact to ~N eps^2 |S|.
    """
    hi = 0.0
    lo = 0.0
    s_hi[0] = 0.0
    s_lo[0] = 0.0
    for i in range(y.shape[0]):
        hi, e = two_sum(hi, y[i])
        lo += e
        s_hi[i + 1] = hi
        s_lo[i + 1] = lo


@njit(cache=True, inline="always")
def window_sums(s_hi, s_lo, j0, m, count, w):
    """w[i] = W_{j0+i} = S_{j0+i+m} - S_{j0+i}, i < count, from dd prefix sums.

    The hi difference is split exactly (TwoSum), so W carries ~1 ulp of its
    own plus ~1e-32 |S|: no cancellation error from the size of S.
    """
    for i in range(count):
        a = j0 + i
        d, e = two_sum(s_hi[a + m], -s_hi[a])
        w[i] = d + (e + (s_lo[a + m] - s_lo[a]))


@njit(cache=True, inline="always")
def second_diff_sumsq(w, m, n):
    """sum_{j<n} ((w[j+2m] - w[j+m]) - (w[j+m] - w[j]))^2, four add chains."""
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    j = 0
    while j + 3 < n:
        v0 = (w[j + 2 * m] - w[j + m]) - (w[j + m] - w[j])
        v1 = (w[j + 1 + 2 * m] - w[j + 1 + m]) - (w[j + 1 + m] - w[j + 1])
        v2 = (w[j + 2 + 2 * m] - w[j + 2 + m]) - (w[j + 2 + m] - w[j + 2])
        v3 = (w[j + 3 + 2 * m] - w[j + 3 + m]) - (w[j + 3 + m] - w[j + 3])
        a0 += v0 * v0
        a1 += v1 * v1
        a2 += v2 * v2
        a3 += v3 * v3
        j += 4
    while j < n:
        v0 = (w[j + 2 * m] - w[j + m]) - (w[j + m] - w[j])
        a0 += v0 * v0
        j += 1
    return (a0 + a1) + (a2 + a3)


@njit(cache=True)
def mdev_sumsq(y, ms):
    """Sum of v_j^2 and term count n per averaging factor (MDEV/TDEV core).

    y: float64[N] phase, ideally mean-removed (see module doc).
    ms: float64[K] integral averaging factors, 0 < m < N.
    Returns (sumsq float64[K], n int64[K]) with n = max(N - 3m, 0) + 1 as
    allantools counts it; sumsq = 0 where n <= 1 (point to be dropped).
    Work: one O(N) prefix pass, then two O(N) passes per tau (W, then v).
    """
    n_samples = y.shape[0]
    k_taus = ms.shape[0]
    sumsq = np.zeros(k_taus)
    nterms = np.zeros(k_taus, dtype=np.int64)
    s_hi = np.empty(n_samples + 1)
    s_lo = np.empty(n_samples + 1)
    w = np.empty(n_samples + 1)
    dd_prefix_sums(y, s_hi, s_lo)
    for k in range(k_taus):
        m = np.int64(ms[k])
        n = max(n_samples - 3 * m, 0) + 1
        nterms[k] = n
        if n <= 1 or m < 1:
            continue
        window_sums(s_hi, s_lo, 0, m, n_samples - m + 1, w)   # W_0 .. W_{N-m}
        sumsq[k] = second_diff_sumsq(w, m, n)                  # v_0 .. v_{N-3m}
    return sumsq, nterms


@njit(cache=True)
def adev_sumsq(y, ms, overlapping):
    """Sum of d_j^2 and term count n per averaging factor (ADEV core).

    y: float64[N] phase; ms: float64[K] integral factors, 0 < m < N.
    overlapping: True -> stride 1 (n = N - 2m), False -> stride m
    (n = ceil((N - 2m) / m)). n is clamped to >= 1 as allantools does;
    sumsq = 0 where n <= 1 (point to be dropped).
    """
    n_samples = y.shape[0]
    k_taus = ms.shape[0]
    sumsq = np.zeros(k_taus)
    nterms = np.zeros(k_taus, dtype=np.int64)
    for k in range(k_taus):
        m = np.int64(ms[k])
        if m < 1:
            nterms[k] = 1
            continue
        stride = np.int64(1) if overlapping else m
        n = (n_samples - 2 * m + stride - 1) // stride
        n = max(n, 1)
        nterms[k] = n
        if n <= 1 or n_samples - 2 * m < 1:
            continue
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        a3 = 0.0
        i = 0
        j = 0
        while i + 3 < n:
            d0 = (y[j + 2 * m] - y[j + m]) - (y[j + m] - y[j])
            j += stride
            d1 = (y[j + 2 * m] - y[j + m]) - (y[j + m] - y[j])
            j += stride
            d2 = (y[j + 2 * m] - y[j + m]) - (y[j + m] - y[j])
            j += stride
            d3 = (y[j + 2 * m] - y[j + m]) - (y[j + m] - y[j])
            j += stride
            a0 += d0 * d0
            a1 += d1 * d1
            a2 += d2 * d2
            a3 += d3 * d3
            i += 4
        while i < n:
            d0 = (y[j + 2 * m] - y[j + m]) - (y[j + m] - y[j])
            a0 += d0 * d0
            j += stride
            i += 1
        sumsq[k] = (a0 + a1) + (a2 + a3)
    return sumsq, nterms


def _centred(x_seconds):
    """float64 1-D copy of the record minus its mean (exact for offset data)."""
    x = np.asarray(x_seconds, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"phase record must be 1-D, got shape {x.shape}")
    if x.shape[0] == 0:
        return np.ascontiguousarray(x)
    return np.ascontiguousarray(x - x.mean())


def mdev(x_seconds, rate_hz, taus="octave"):
    """Modified Allan deviation of a phase record (= allantools.mdev).

    x_seconds: 1-D phase / time error (s), finite.
    rate_hz: sample rate (Hz), > 0.
    taus: seconds (array-like) or "octave" (default), "decade", "all", "log10";
        tau is rounded to m = round(tau * rate_hz) as allantools does.
    Returns (taus_used_s, mdev): float64 arrays (dimensionless fractional
    frequency), only the taus with 3m <= N - 1; both empty if none is left
    (allantools raises there).
    """
    y = _centred(x_seconds)
    m, t = tau_factors(y.shape[0], rate_hz, taus)
    if m.shape[0] == 0:
        return t, np.zeros(0)
    sumsq, n = mdev_sumsq(y, m)
    keep = n > 1
    m, t, sumsq, n = m[keep], t[keep], sumsq[keep], n[keep].astype(np.float64)
    return t, np.sqrt(sumsq / (2.0 * m * m * t * t * n))


def tdev(x_seconds, rate_hz, taus="octave"):
    """Time deviation of a phase record (s), = allantools.tdev.

    TDEV(tau) = tau MDEV(tau) / sqrt(3). Arguments and the kept taus as
    `mdev`. Returns (taus_used_s, tdev_s).
    """
    t, md = mdev(x_seconds, rate_hz, taus)
    return t, t * md / SQRT3


def adev(x_seconds, rate_hz, taus="octave", overlapping=True):
    """Allan deviation of a phase record.

    overlapping: True (default) -> the overlapping estimator, equal to
        allantools.oadev, kept where 2m <= N - 2; False -> the
        non-overlapping one, equal to allantools.adev, kept where 3m <= N - 1.
    Other arguments as `mdev`. Returns (taus_used_s, adev), dimensionless.
    """
    y = _centred(x_seconds)
    m, t = tau_factors(y.shape[0], rate_hz, taus)
    if m.shape[0] == 0:
        return t, np.zeros(0)
    sumsq, n = adev_sumsq(y, m, bool(overlapping))
    keep = n > 1
    m, t, sumsq, n = m[keep], t[keep], sumsq[keep], n[keep].astype(np.float64)
    return t, np.sqrt(sumsq / (2.0 * n)) / m * float(rate_hz)


def oadev(x_seconds, rate_hz, taus="octave"):
    """Overlapping Allan deviation (= allantools.oadev); same as `adev`."""
    return adev(x_seconds, rate_hz, taus, overlapping=True)


def tdev_at(x_seconds, rate_hz, tau_s):
    """TDEV (s) at one tau (s, rounded to m = round(tau * rate_hz)).

    Needs a record longer than 3 tau (3m <= N - 1): the DESIGN's "TDEV at
    1 s" needs > 3 s of data. Returns NaN when the tau cannot be estimated.
    """
    _, td = tdev(x_seconds, rate_hz, [float(tau_s)])
    return float(td[0]) if td.shape[0] else float("nan")
