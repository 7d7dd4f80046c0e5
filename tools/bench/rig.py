"""Bench group "rig": the simulated rig's speed, open loop.

The co-simulation runs the rig and the bank at 100 kHz for 40 channels; it
keeps real time only if one rig tick of 40 channels stays well under 10 us.
Figures (rack10, 40 channels, codes at mid-scale, seed 1):

- `rig_run` (rig_step in one jitted loop, as the fused co-simulation calls
  it): M channel-steps/s and the real-time factor at 100 kHz (simulated s
  per wall s).
- rig_step from Python: one 40-channel tick per Python call (the HAL loop
  path): us per call, i.e. the unboxing of the state namedtuples.
- the same tick interpreted (`rig_step.py_func`, a few ticks): the ratio is
  what numba buys on the same code.
- longhaul (4 segmented links at 10 kHz): real-time factor.

quick=True: a few hundred ticks each (checks the bench runs, not speed).
"""
from __future__ import annotations

import sys

import numpy as np

from sim_hw.rig import build_rig, rig_run, rig_step
from tools.bench import Row, best_time

GROUP = "rig"
NCH = 40


def _mid(cfg):
    N = cfg.n_channels
    return (np.full(N, cfg.pzt_mid, np.int32), np.full(N, cfg.spool_mid, np.int32),
            np.zeros(N, np.int32))


def run(quick: bool) -> list[Row]:
    rows: list[Row] = []
    n = 300 if quick else 200_000
    reps = 1 if quick else 3
    cfg, st = build_rig("rack10", NCH, 1)
    codes = _mid(cfg)
    out = (np.empty((n, NCH), np.int16), np.empty((n, NCH), np.int16), np.empty((n, NCH)))
    rig_run(cfg, st, *codes, 2)                               # JIT warm-up
    t = best_time(lambda: rig_run(cfg, st, *codes, n, *out), repeat=reps)
    rate = cfg.loop_rate_hz
    rows.append(Row(GROUP, "rig_run, 40 ch", n * NCH / t / 1e6, "M channel-steps/s",
                    f"rack10 open loop, {n} ticks; {1e9 * t / (n * NCH):.0f} ns per channel-step"))
    rows.append(Row(GROUP, "rig_run real-time factor", n / rate / t, "x",
                    "simulated s per wall s at 100 kHz, 40 ch (goal >= 10x with the bank)"))

    ai, aq, tr = (np.zeros(NCH, np.int16), np.zeros(NCH, np.int16), np.zeros(NCH))
    m = 100 if quick else 2000
    rig_step(cfg, st, *codes, ai, aq, tr)
    def py_calls():
        for _ in range(m):
            rig_step(cfg, st, *codes, ai, aq, tr)
    t_py = best_time(py_calls, repeat=reps) / m
    rows.append(Row(GROUP, "rig_step from Python", 1e6 * t_py, "us/call",
                    "40-ch tick per Python call: mostly unboxing the state namedtuples; "
                    "budget at 100 kHz is 10 us for rig + bank"))

    k = 3 if quick else 20
    def interp():
        for _ in range(k):
            rig_step.py_func(cfg, st, *codes, ai, aq, tr)
    def jit():
        for _ in range(k):
            rig_step(cfg, st, *codes, ai, aq, tr)
    jit()
    rows.append(Row(GROUP, "jit / interpreted tick", best_time(interp, repeat=1) /
                    best_time(jit, repeat=reps), "x",
                    f"rig_step vs its .py_func, {k} ticks x 40 ch called from Python"))

    cfg_l, st_l = build_rig("longhaul", None, 1)
    nl = 50 if quick else 20_000
    cl = _mid(cfg_l)
    rig_run(cfg_l, st_l, *cl, 2)
    t = best_time(lambda: rig_run(cfg_l, st_l, *cl, nl), repeat=reps)
    rows.append(Row(GROUP, "longhaul real-time factor", nl / cfg_l.loop_rate_hz / t, "x",
                    f"4 segmented links ({cfg_l.n_segments} segments, {cfg_l.substeps} "
                    f"internal steps per tick) at {cfg_l.loop_rate_hz / 1e3:.0f} kHz"))
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(f"{r.group:5s} {r.name:28s} {r.value:10.3f} {r.unit:18s} {r.note}")
