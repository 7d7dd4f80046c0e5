"""`attobus run --plot FILE.png`: residual, TDEV and PSD of chosen channels."""
from __future__ import annotations

import numpy as np

from firmware.faults import LOCKED
from tools import analysis


def plot_run(path, rec, result, channels):
    """Three panels: out-of-loop residual vs time, TDEV vs tau, residual PSD vs f."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'attobus[plot]'") from None
    n = rec.truth.shape[1]
    bad = [c for c in channels if not 0 <= c < n]
    if bad:
        raise ValueError(f"--plot-channels {bad} outside 0..{n - 1}")
    rate = result.loop_rate_hz
    fig, (ax_t, ax_d, ax_p) = plt.subplots(3, 1, figsize=(9, 11))
    for c in channels:
        x = rec.truth[:, c]
        keep = np.isfinite(x) & ((rec.state[:, c] == LOCKED) | result.open_loop)
        if keep.sum() < 16:
            continue
        x = x[keep] - x[keep].mean()
        t = np.flatnonzero(keep) / rate
        step = max(1, x.size // 20000)                 # draw at most ~20k points
        ax_t.plot(t[::step], x[::step] / 1e-18, lw=0.6, label=f"ch {c}")
        taus, dev = analysis.tdev(x, rate, "octave")
        if len(taus):
            ax_d.loglog(taus, dev / 1e-18, marker=".", label=f"ch {c}")
        f, p = analysis.welch_psd(x, rate, nperseg=min(x.size, 1 << 16))
        ax_p.loglog(f[1:], p[1:] / 1e-36, lw=0.7, label=f"ch {c}")
    ax_t.set(xlabel="time (s)", ylabel="one-way residual (as)",
             title=f"{result.scenario}, seed {result.seed}: out-of-loop residual at the blade")
    ax_d.set(xlabel="tau (s)", ylabel="TDEV (as)")
    ax_p.set(xlabel="frequency (Hz)", ylabel="PSD (as^2/Hz)")
    for ax in (ax_t, ax_d, ax_p):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
