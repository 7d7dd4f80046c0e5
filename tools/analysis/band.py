"""Band-limited RMS by PSD integration, and helpers to compare spectra.

band_rms integrates a one-sided PSD over [f_lo, f_hi] with the trapezoid
rule on the bin grid, the PSD linearly interpolated at the two band edges
(so an edge between bins takes the straight line between them, and the
integral is exact for a PSD that is piecewise linear between bins). The
band is clipped to the grid [f[0], f[-1]]. RMS = sqrt(integral).

residual_rms is the project's "residual": RMS of a record over
1 Hz - 50 kHz, band-limited by PSD integration (DESIGN section 5). Its
Welch segment length is chosen so the lower edge is resolved:
- record >= 4 / f_lo seconds: segments of ceil(4 rate / f_lo) samples
  (4 s for 1 Hz, bin spacing f_lo / 4, so f_lo sits 4 bins above DC, clear of
  the Hann main lobe (+-2 bins) around DC and drift), 50 % overlap, averaged;
- shorter: the whole record as one segment (bin spacing rate / N).
The DC bin is never integrated: after the per-segment mean removal it holds
only window leakage of the drift. So if f_lo is below the first bin
(record shorter than 1 / f_lo) the band starts at the first bin, rate / N,
and `residual_band(...).f_lo_used_hz` says so. `f_lo_resolved` is True when
the bin spacing is <= f_lo / 2 (record >= 2 / f_lo): the edge is then at
least two bins above DC. An unresolved edge means the RMS misses (or, with
the window's leakage, only partly holds) what lies between f_lo and the
first couple of bins: treat it as "RMS above ~2 / T_record".
"""
from typing import NamedTuple

import numpy as np

from .welch import welch_psd

SEGMENT_EDGE_BINS = 4      # residual_rms: f_lo sits this many bins above DC
RESOLVED_EDGE_BINS = 2     # ... and counts as resolved from this many bins


def band_rms(f_hz, psd, f_lo_hz, f_hi_hz):
    """RMS (units of the PSD's sqrt(u^2/Hz * Hz) = u) over [f_lo_hz, f_hi_hz].

    f_hz: increasing frequencies (Hz); psd: one-sided density (u^2/Hz) at f_hz.
    f_lo_hz <= f_hi_hz (Hz); the band is clipped to [f_hz[0], f_hz[-1]] and
    an empty band gives 0.0. Trapezoid with linearly interpolated edges.
    """
    f = np.asarray(f_hz, dtype=np.float64)
    p = np.asarray(psd, dtype=np.float64)
    if f.ndim != 1 or f.shape != p.shape or f.shape[0] < 2:
        raise ValueError("f_hz and psd must be 1-D of the same length >= 2")
    lo = max(float(f_lo_hz), f[0])
    hi = min(float(f_hi_hz), f[-1])
    if not hi > lo:
        return 0.0
    inner = (f > lo) & (f < hi)
    fg = np.concatenate(([lo], f[inner], [hi]))
    pg = np.concatenate(([np.interp(lo, f, p)], p[inner], [np.interp(hi, f, p)]))
    area = np.sum(0.5 * (pg[1:] + pg[:-1]) * np.diff(fg))
    return float(np.sqrt(max(area, 0.0)))


class BandRms(NamedTuple):
    """What residual_band measured and how."""
    rms: float            # RMS over [f_lo_used_hz, f_hi_used_hz] (units of x)
    f_lo_used_hz: float   # max(f_lo, first non-DC bin)
    f_hi_used_hz: float   # min(f_hi, Nyquist)
    df_hz: float          # Welch bin spacing rate / nperseg
    nperseg: int          # Welch segment length (samples)
    f_lo_resolved: bool   # df_hz <= f_lo / 2


def residual_band(x, rate_hz, f_lo_hz=1.0, f_hi_hz=50e3, nperseg=None):
    """Band-limited RMS of x with the details of the estimate (BandRms).

    x: 1-D record (any unit u, e.g. s of one-way delay), >= 2 samples; its
        mean (and each segment's mean) is removed.
    rate_hz: sample rate (Hz) > 0. f_lo_hz: lower edge (Hz) > 0, default 1.
    f_hi_hz: upper edge (Hz), default 50e3, clipped to Nyquist.
    nperseg: Welch segment length (samples); default: see module doc.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.shape[0] < 2:
        raise ValueError("x must be 1-D with at least 2 samples")
    rate = float(rate_hz)
    f_lo = float(f_lo_hz)
    if not (rate > 0.0 and f_lo > 0.0 and float(f_hi_hz) > f_lo):
        raise ValueError("need rate_hz > 0 and 0 < f_lo_hz < f_hi_hz")
    n = x.shape[0]
    if nperseg is None:
        want = int(np.ceil(SEGMENT_EDGE_BINS * rate / f_lo))
        nperseg = want if n >= want else n
    nperseg = max(2, min(int(nperseg), n))
    f, psd = welch_psd(x, rate, nperseg=nperseg)
    df = rate / nperseg
    lo = max(f_lo, f[1])
    hi = min(float(f_hi_hz), f[-1])
    return BandRms(rms=band_rms(f, psd, lo, hi), f_lo_used_hz=lo, f_hi_used_hz=hi,
                   df_hz=df, nperseg=nperseg,
                   f_lo_resolved=bool(df <= f_lo / RESOLVED_EDGE_BINS))


def residual_rms(x, rate_hz, f_lo_hz=1.0, f_hi_hz=50e3, nperseg=None):
    """RMS of x over [f_lo_hz, f_hi_hz] by PSD integration (units of x).

    The DESIGN's residual: "RMS over 1 Hz - 50 kHz (band-limited by PSD
    integration)". Arguments as `residual_band`, which also says whether
    the lower edge was resolved on this record length.
    """
    return residual_band(x, rate_hz, f_lo_hz, f_hi_hz, nperseg).rms


def _band_mask(f, mask):
    if mask is None:
        return np.ones(f.shape, dtype=bool)
    if isinstance(mask, tuple) and len(mask) == 2:
        return (f >= float(mask[0])) & (f <= float(mask[1]))
    m = np.asarray(mask, dtype=bool)
    if m.shape != f.shape:
        raise ValueError("mask must be a bool array shaped like f, a (f_lo, f_hi) tuple or None")
    return m


def psd_ratio_db(f, psd_measured, psd_theory, mask=None):
    """10 log10(measured / theory) at the selected bins (dB).

    f: frequencies (Hz); psd_measured: array on f; psd_theory: array on f or
    a callable theory(f_selected) -> PSD. mask: None (all bins), a bool
    array on f, or a (f_lo_hz, f_hi_hz) tuple (inclusive band).
    Returns a float64 array, one value per selected bin.
    """
    f = np.asarray(f, dtype=np.float64)
    sel = _band_mask(f, mask)
    meas = np.asarray(psd_measured, dtype=np.float64)[sel]
    theo = psd_theory(f[sel]) if callable(psd_theory) else np.asarray(psd_theory, dtype=np.float64)[sel]
    return 10.0 * np.log10(meas / np.asarray(theo, dtype=np.float64))


def log_bin(f, psd, bins_per_decade, return_counts=False):
    """Average a PSD into log-spaced bins.

    Bin k holds the bins with 10**(k / b) <= f < 10**((k + 1) / b),
    b = bins_per_decade (> 0); f <= 0 (DC) is dropped, empty bins are
    dropped. Each output is the arithmetic mean of f and of psd over the
    members, so theory evaluated on the same grid and binned the same way
    compares bin for bin.
    Returns (f_bin_hz, psd_bin) [, n_per_bin if return_counts].
    """
    f = np.asarray(f, dtype=np.float64)
    p = np.asarray(psd, dtype=np.float64)
    b = float(bins_per_decade)
    if not b > 0.0 or f.shape != p.shape:
        raise ValueError("need bins_per_decade > 0 and f, psd of one shape")
    pos = f > 0.0
    f, p = f[pos], p[pos]
    # 1e-9 bin of slack so an f exactly on an edge (10**(k/b)) falls in bin k
    idx = np.floor(np.log10(f) * b + 1e-9).astype(np.int64)
    uniq, inv, counts = np.unique(idx, return_inverse=True, return_counts=True)
    f_bin = np.bincount(inv, weights=f) / counts
    p_bin = np.bincount(inv, weights=p) / counts
    if return_counts:
        return f_bin, p_bin, counts
    return f_bin, p_bin
