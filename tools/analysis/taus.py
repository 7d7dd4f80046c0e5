"""Tau lists -> integer averaging factors m, with allantools' exact rules.

attobus reports TDEV/ADEV/MDEV that must equal allantools' on the same data
and taus (relative 1e-9), so the tau list is cleaned exactly as
`allantools.tau_generator` does it (same numpy expressions, same order):

- `taus` None, [] or "octave": tau = 2**k / rate, k = 0 .. floor(log2(N)).
- "decade": tau = {1, 2, 4} * 10**k / rate, k = 0 .. floor(log10(N)).
- "all": every m = 1 .. N.  "log10": about 10 taus per decade.
- an explicit list/array of seconds: m = np.round(tau * rate) (numpy's
  round-half-to-even: tau = 2.5 / rate gives m = 2, 3.5 / rate gives m = 4).

Then m is kept only if 0 < m < N, duplicates are dropped and the list is
sorted; the tau reported back is m / rate, not the tau asked for. Each
estimator afterwards drops the m whose number of terms n is <= 1 (allantools'
`remove_small_ns`): MDEV/TDEV keep 3m <= N - 1, overlapping ADEV keeps
2m <= N - 2, non-overlapping ADEV keeps 3m <= N - 1.
"""
import numpy as np

KEYWORDS = ("octave", "decade", "all", "log10")


def tau_factors(n_samples, rate_hz, taus="octave"):
    """Averaging factors and the taus they stand for.

    n_samples: int, length N of the phase record.
    rate_hz: float > 0, sample rate of the record (Hz).
    taus: seconds (scalar or array-like), or one of "octave" (default, also
        for None or an empty list), "decade", "all", "log10".
    Returns (m, taus_s): float64 arrays, m integral-valued, sorted, unique,
    0 < m < N; taus_s = m / rate_hz. Either may be empty.
    """
    rate = float(rate_hz)
    if not rate > 0.0:
        raise ValueError(f"rate_hz must be > 0, got {rate_hz!r}")
    n = int(n_samples)
    if taus is None or (isinstance(taus, (list, tuple)) and len(taus) == 0):
        taus = "octave"
    if isinstance(taus, str):
        if n < 1:
            return np.zeros(0), np.zeros(0)
        if taus == "octave":
            maxn = np.floor(np.log2(n))
            t = (1.0 / rate) * np.logspace(0, int(maxn), int(maxn + 1), base=2.0)
        elif taus == "decade":
            maxn = np.floor(np.log10(n))
            t = []
            for k in range(int(maxn + 1)):
                t.append(1.0 * (1.0 / rate) * pow(10.0, k))
                t.append(2.0 * (1.0 / rate) * pow(10.0, k))
                t.append(4.0 * (1.0 / rate) * pow(10.0, k))
            t = np.array(t)
        elif taus == "all":
            t = (1.0 / rate) * np.linspace(1.0, n, n)
        elif taus == "log10":
            maxn = np.log10(n)
            t = (1.0 / rate) * np.logspace(0, maxn, int(10 * maxn), base=10.0)
        else:
            raise ValueError(f"taus keyword must be one of {KEYWORDS}, got {taus!r}")
    else:
        t = np.atleast_1d(np.asarray(taus, dtype=np.float64))
    m = np.round(t * rate)
    m = m[(m < n) & (m > 0)]
    m = np.unique(m)                  # sorted, duplicates removed (NaN taus fall out above)
    return m.astype(np.float64), m / rate
