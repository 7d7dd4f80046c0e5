"""Welch power spectral density, numpy only, equal to scipy.signal.welch.

welch_psd(x, rate_hz, nperseg, window) returns what
scipy.signal.welch(x, fs=rate_hz, window=window, nperseg=nperseg) returns
with every other argument at its default:
- segments of nperseg samples (default 256, clamped to len(x)), hop
  nperseg - nperseg // 2 (50 % overlap), (N - noverlap) // hop segments,
  the tail that does not fill a segment is dropped;
- each segment minus its own mean ('constant' detrend), times the window;
- |rfft|^2 / (rate_hz * sum(w^2)): density scaling (units^2 / Hz), so a
  white noise of variance s^2 reads 2 s^2 / rate_hz;
- one-sided: every bin but DC (and Nyquist for even nperseg) doubled, so the
  sum of psd * df over the bins is the window-weighted mean square of the
  detrended segments (Parseval; see tests);
- segments averaged by their mean.
Segments are transformed in blocks of about 2**20 samples so a long record
never holds its overlapped copy in memory at once.
"""
import numpy as np

# Cosine-sum windows by name: w = sum_k a_k cos(k fac), fac = linspace(-pi, pi)
# over nperseg + 1 points with the last dropped (DFT-even / "periodic", as
# scipy.signal.get_window builds them for spectral analysis).
COSINE_WINDOWS = {
    "hann": (0.5, 0.5),
    "hann_periodic": (0.5, 0.5),
    "hanning": (0.5, 0.5),
    "hamming": (0.54, 0.46),
    "blackman": (0.42, 0.50, 0.08),
    "boxcar": (1.0,),
    "rect": (1.0,),
    "rectangular": (1.0,),
    "ones": (1.0,),
}
BLOCK_SAMPLES = 1 << 20


def spectral_window(window, nperseg):
    """Periodic window of nperseg samples: a name of COSINE_WINDOWS or an array.

    Built with scipy's own expression (general_cosine, sym=False), so the
    values agree with scipy.signal.get_window to the last bit or so.
    """
    if isinstance(window, str):
        try:
            a = COSINE_WINDOWS[window.lower()]
        except KeyError:
            raise ValueError(f"window {window!r} not in {sorted(COSINE_WINDOWS)}; "
                             "pass an array for other windows") from None
        if nperseg <= 1:
            return np.ones(nperseg)
        fac = np.linspace(-np.pi, np.pi, nperseg + 1)
        w = np.zeros(nperseg + 1)
        for k in range(len(a)):
            w += a[k] * np.cos(k * fac)
        return w[:-1]
    w = np.asarray(window, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != nperseg:
        raise ValueError(f"window array must be 1-D of length nperseg={nperseg}")
    return w


def welch_psd(x, rate_hz, nperseg=None, window="hann"):
    """One-sided Welch PSD of a real record.

    x: 1-D real samples (any unit u), at least 1 sample.
    rate_hz: sample rate (Hz), > 0.
    nperseg: samples per segment, default 256 (as scipy) or len(window) for
        an array window; clamped to len(x) for a named window.
    window: "hann" (default, periodic), "hamming", "blackman", "boxcar", or
        a float array of length nperseg.
    Returns (f_hz, psd): float64 arrays of nperseg // 2 + 1 bins spaced
    rate_hz / nperseg from 0 Hz, psd in u^2 / Hz.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.shape[0] == 0:
        raise ValueError("x must be a non-empty 1-D array")
    rate = float(rate_hz)
    if not rate > 0.0:
        raise ValueError(f"rate_hz must be > 0, got {rate_hz!r}")
    n = x.shape[0]
    if isinstance(window, str):
        nperseg = 256 if nperseg is None else int(nperseg)
        if nperseg < 1:
            raise ValueError(f"nperseg must be >= 1, got {nperseg}")
        nperseg = min(nperseg, n)
    else:
        nperseg = len(window) if nperseg is None else int(nperseg)
        if nperseg > n:
            raise ValueError(f"window of {nperseg} samples is longer than x ({n})")
    win = spectral_window(window, nperseg)
    noverlap = nperseg // 2
    hop = nperseg - noverlap
    nseg = (n - noverlap) // hop
    scale = 1.0 / (rate * np.sum(win * win))

    segs = np.lib.stride_tricks.sliding_window_view(x, nperseg)[::hop][:nseg]
    acc = np.zeros(nperseg // 2 + 1)
    per_block = max(1, BLOCK_SAMPLES // nperseg)
    for b0 in range(0, nseg, per_block):
        seg = segs[b0:b0 + per_block]
        seg = (seg - seg.mean(axis=1, keepdims=True)) * win
        spec = np.fft.rfft(seg, n=nperseg, axis=1)
        acc += np.sum(spec.real * spec.real + spec.imag * spec.imag, axis=0)
    psd = acc * (scale / nseg)
    psd[1:-1 if nperseg % 2 == 0 else None] *= 2.0
    f = np.fft.rfftfreq(nperseg, 1.0 / rate)
    return f, psd
