"""Bench group "analysis": TDEV and ADEV against allantools, same data, same taus.

The record is 10**6 phase samples (10 s at the 100 kHz loop rate; 10**4
with quick=True): 1e-17 s white PM plus a 1e-18 s/step random walk on a
49 ns offset, octave taus (allantools' rules, 19 of them kept at 10**6).
Ours is called once before timing, so numba has compiled (or loaded its
cache) and only the run is timed. Both sides get the same best-of-N timing.
"""
from __future__ import annotations

import numpy as np

from tools.analysis import adev, tdev
from tools.bench import Row, best_time

GROUP = "analysis"


def _record(n: int) -> np.ndarray:
    rng = np.random.default_rng(20240611)
    return 49e-9 + 1e-17 * rng.normal(size=n) + 1e-18 * np.cumsum(rng.normal(size=n))


def _pair(rows, label, ours, ref, n, repeat_ref):
    """Time ours and the reference, add the three rows, return max rel diff."""
    t_ours_s, d_ours = ours()                  # warm: JIT compile / cache load
    t_ours = best_time(ours, repeat=5)
    t_ref_s, d_ref = ref()
    t_ref = best_time(ref, repeat=repeat_ref)
    same_taus = np.array_equal(t_ours_s, t_ref_s)
    # on the raw 49 ns offset allantools itself carries ~1e-7 rounding (its
    # MDEV cumsum runs on the offset); the tests compare on offset-free data
    rel = float(np.max(np.abs(d_ours / d_ref - 1.0))) if same_taus else float("nan")
    what = f"{n:.0e} points, {len(t_ours_s)} octave taus"
    rows.append(Row(GROUP, f"{label} attobus", t_ours * 1e3, "ms",
                    f"{what}; numba warmed (compiled) before timing"))
    rows.append(Row(GROUP, f"{label} allantools", t_ref * 1e3, "ms", what))
    rows.append(Row(GROUP, f"{label} speed-up vs allantools", t_ref / t_ours, "x",
                    f"same data, same taus, side by side; taus equal: {same_taus}, "
                    f"max |ours/allantools - 1| = {rel:.1e}"))


def run(quick: bool) -> list[Row]:
    try:
        import allantools
    except ImportError:
        return [Row(GROUP, "tdev", float("nan"), "x", "allantools not installed (pip install attobus[test])")]
    n = 10**4 if quick else 10**6
    rate = 1e5
    x = _record(n)
    rows: list[Row] = []
    repeat_ref = 2 if quick else 3
    _pair(rows, "tdev",
          lambda: tdev(x, rate, "octave"),
          lambda: allantools.tdev(x, rate=rate, data_type="phase", taus="octave")[:2],
          n, repeat_ref)
    _pair(rows, "adev (overlapping)",
          lambda: adev(x, rate, "octave"),
          lambda: allantools.oadev(x, rate=rate, data_type="phase", taus="octave")[:2],
          n, repeat_ref)
    _pair(rows, "adev (non-overlapping)",
          lambda: adev(x, rate, "octave", overlapping=False),
          lambda: allantools.adev(x, rate=rate, data_type="phase", taus="octave")[:2],
          n, repeat_ref)
    return rows


if __name__ == "__main__":
    import sys
    for r in run(quick="--quick" in sys.argv):
        print(f"{r.group:9s} {r.name:36s} {r.value:10.3f} {r.unit:3s} {r.note}")
