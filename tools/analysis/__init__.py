"""attobus analysis: frequency stability and spectra of time-error records.

Stability (allantools-equal, numba, O(N) per tau):
    tdev(x_seconds, rate_hz, taus="octave") -> (taus_used_s, tdev_s)
    mdev(x_seconds, rate_hz, taus="octave") -> (taus_used_s, mdev)
    adev(x_seconds, rate_hz, taus="octave", overlapping=True) -> (taus_used_s, adev)
    oadev(...) (= adev overlapping), tdev_at(x_seconds, rate_hz, tau_s) -> float
    tau_factors(n_samples, rate_hz, taus) -> (m, taus_s)
Spectra (numpy only):
    welch_psd(x, rate_hz, nperseg=None, window="hann") -> (f_hz, psd)
    band_rms(f_hz, psd, f_lo_hz, f_hi_hz) -> float
    residual_rms(x, rate_hz, f_lo_hz=1.0, f_hi_hz=50e3, nperseg=None) -> float
    residual_band(...) -> BandRms (rms, edges used, bin spacing, resolved flag)
    psd_ratio_db(f, psd_measured, psd_theory, mask=None) -> array (dB)
    log_bin(f, psd, bins_per_decade, return_counts=False) -> (f_bin_hz, psd_bin)
"""
from .taus import tau_factors
from .allan import tdev, mdev, adev, oadev, tdev_at
from .welch import welch_psd, spectral_window
from .band import band_rms, residual_rms, residual_band, BandRms, psd_ratio_db, log_bin

__all__ = [
    "tau_factors", "tdev", "mdev", "adev", "oadev", "tdev_at",
    "welch_psd", "spectral_window",
    "band_rms", "residual_rms", "residual_band", "BandRms", "psd_ratio_db", "log_bin",
]
