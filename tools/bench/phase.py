"""Bench group "phase": atan2 and unwrapper against numpy, same data, side by side.

unwrap: 10**7 int32 phase samples of a random walk (steps under half a turn,
seeded). attobus `unwrap_turns` on the int32 codes against `numpy.unwrap`
on the float64 radians of the same samples (the conversion is done once,
outside the timing, so numpy is timed on its own input format).

atan2: 10**7 uniformly random int16 I/Q pairs. attobus `atan2_turns` (int32
turns out) against `numpy.arctan2` on the same pairs converted to float64
once outside the timing (radians out; numpy's own turn conversion would cost
it more). numpy.arctan2 fed the int16 arrays directly computes in float32
(what a user typing np.arctan2(q, i) gets); that rate is reported too.

front end: the per-channel phase front end of the tick (atan2 + return
power + unwrap step + slip flag) over 40 channels, 2.5e5 ticks, written the
way the tick kernel calls the scalar kernels; channel-updates per second.

Every attobus kernel is called once before timing (JIT compile or cache
load), then all get the same best-of-N timing. quick=True: 10**5 samples.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from firmware.atan2 import atan2_turns, atan2_turns_scalar
from firmware.power import return_power
from firmware.unwrap import UnwrapState, is_slip, unwrap_step, unwrap_turns, wrap_diff
from tools.bench import Row, best_time

GROUP = "phase"


def _walk(n: int) -> np.ndarray:
    rng = np.random.default_rng(20240612)
    steps = rng.integers(-(2**31 - 2**21), 2**31 - 2**21, n)
    return ((np.cumsum(steps) + 2**31) % 2**32 - 2**31).astype(np.int32)


@njit(cache=True)
def _front_end(i, q, phase, power, unwrapped, slips, acc, last, max_step):
    """The tick's per-channel phase front end, batched over T ticks x N channels."""
    T, N = i.shape
    for k in range(T):
        for c in range(N):
            ph = atan2_turns_scalar(q[k, c], i[k, c])
            power[k, c] = return_power(i[k, c], q[k, c])
            step = wrap_diff(ph, last[c])
            slips[c] += is_slip(step, max_step[c])
            acc[c] = unwrap_step(acc[c], last[c], ph)
            last[c] = ph
            phase[k, c] = ph
            unwrapped[k, c] = acc[c]


def run(quick: bool) -> list[Row]:
    n = 10**5 if quick else 10**7
    rows: list[Row] = []
    rep_ours, rep_np = (3, 2) if quick else (5, 3)

    # --- unwrap
    x = _walk(n)
    rad = x * (2 * np.pi / 2**32)
    u = unwrap_turns(x)                              # warm
    t_ours = best_time(lambda: unwrap_turns(x), repeat=rep_ours)
    nu = np.unwrap(rad)
    t_np = best_time(lambda: np.unwrap(rad), repeat=rep_np)
    same = np.array_equal((u - x) >> 32, np.round((nu - rad) / (2 * np.pi)).astype(np.int64))
    what = f"{n:.0e} int32 samples, random walk"
    rows.append(Row(GROUP, "unwrap attobus", n / t_ours / 1e6, "Msamples/s",
                    f"{what}; unwrap_turns, int32 codes -> int64"))
    rows.append(Row(GROUP, "unwrap numpy.unwrap", n / t_np / 1e6, "Msamples/s",
                    f"{what}; float64 radians of the same samples"))
    rows.append(Row(GROUP, "unwrap speed-up vs numpy.unwrap", t_np / t_ours, "x",
                    f"side by side, same data; whole turns identical: {same}; target >= 3x"))

    # --- atan2
    rng = np.random.default_rng(20240613)
    y = rng.integers(-32768, 32768, n).astype(np.int16)
    xx = rng.integers(-32768, 32768, n).astype(np.int16)
    yf = y.astype(np.float64)
    xf = xx.astype(np.float64)
    a = atan2_turns(y, xx)                           # warm
    t_ours = best_time(lambda: atan2_turns(y, xx), repeat=rep_ours)
    ref = np.arctan2(yf, xf)
    t_np = best_time(lambda: np.arctan2(yf, xf), repeat=rep_np)
    t_np32 = best_time(lambda: np.arctan2(y, xx), repeat=rep_np)
    e = (a - ref / (2 * np.pi) * 2**32 + 2**31) % 2**32 - 2**31
    err = f"error vs float64 numpy: {np.sqrt(np.mean(e * e)) / 2**32:.2e} turn RMS, " \
          f"{np.abs(e).max() / 2**32:.2e} max"
    what = f"{n:.0e} random int16 I/Q pairs"
    rows.append(Row(GROUP, "atan2 attobus", n / t_ours / 1e6, "Msamples/s",
                    f"{what}; atan2_turns, integer only, int32 turns out; {err}"))
    rows.append(Row(GROUP, "atan2 numpy.arctan2 float64", n / t_np / 1e6, "Msamples/s",
                    f"{what} as float64, radians out"))
    rows.append(Row(GROUP, "atan2 speed-up vs numpy float64", t_np / t_ours, "x",
                    "side by side, same pairs"))
    rows.append(Row(GROUP, "atan2 numpy.arctan2 on int16 (float32)", n / t_np32 / 1e6,
                    "Msamples/s", "the int16 arrays passed directly: numpy computes in float32"))
    rows.append(Row(GROUP, "atan2 speed-up vs numpy float32", t_np32 / t_ours, "x",
                    "side by side, same pairs"))
    rows.append(Row(GROUP, "atan2 attobus per sample", t_ours / n * 1e9, "ns",
                    "vectorised loop over the scalar kernel (AVX2, 4 lanes)"))

    # --- per-channel front end, tick-shaped
    N = 40
    T = max(n // N, 1)
    T = min(T, 250_000)
    ii = rng.integers(-32768, 32768, (T, N)).astype(np.int16)
    qq = rng.integers(-32768, 32768, (T, N)).astype(np.int16)
    ph = np.empty((T, N), np.int32)
    pw = np.empty((T, N), np.int64)
    uw = np.empty((T, N), np.int64)
    st = UnwrapState.new(N)
    bound = np.full(N, 2**31, np.int64)

    def fe():
        _front_end(ii, qq, ph, pw, uw, st.slips, st.acc, st.last, bound)
    fe()                                             # warm
    t_fe = best_time(fe, repeat=rep_ours)
    rows.append(Row(GROUP, "front end (atan2+power+unwrap+slip)", T * N / t_fe / 1e6,
                    "M channel-updates/s", f"{N} channels x {T} ticks, one core, "
                    f"{t_fe / (T * N) * 1e9:.2f} ns per channel-update"))
    return rows


if __name__ == "__main__":
    import sys
    for r in run(quick="--quick" in sys.argv):
        print(f"{r.group:6s} {r.name:40s} {r.value:10.3f} {r.unit:20s} {r.note}")
