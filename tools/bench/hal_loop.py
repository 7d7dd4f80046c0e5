"""Bench group "hal_loop": the bank on the simulated rig, stepped and fused.

- stepped: the Python host loop of `tools.runner.run_stepped`, one tick at a
  time through the Backend interface (`hal.sim_backend.SimBackend`, rack10,
  40 channels): `backend.exchange` (one rig tick) then `Bank.step`. The
  per-tick latency (exchange + step, as the runner times it) gives p50, p99
  and max in microseconds over 20000 ticks, after 1000 untimed warm-up ticks
  (JIT load, rig and bank past detection).
- fused: `tools.runner.run_fused`, rig and bank in one jitted loop, rack10,
  40 channels, 1 s simulated, after a 0.02 s warm-up run; its real-time
  factor (simulated s per wall s; the 100 kHz rig must reach 1.0 to keep up)
  with threads=1 and threads=2 (two channel blocks of 20, bit-identical to
  one thread, tests/test_cosim_parallel.py), run alternately, best of 3
  each (the machine is shared: the best is the least disturbed), and the
  speed-up of 2 threads over 1 from those two figures. Beside it the process
  CPU time per simulated second of each (least of the tries) and their
  ratio: the cost of the split, which load does not hide (on a busy
  machine the kernel shares the cores per session, so 2 threads may get
  no more CPU than 1 and the wall-time speed-up says little).
- fused / stepped: ticks per wall second of the two paths (fused with one
  thread: the same core count), side by side. The stepped rate counts the
  whole loop wall time, not just the latencies.

quick=True: 500 stepped ticks after 100 warm-up ticks, 0.05 s fused once each.
"""
from __future__ import annotations

import math
import time

import numpy as np

from firmware.bank import Bank
from hal.sim_backend import SimBackend
from sim_hw.scenarios import get_scenario
from tools import runner
from tools.presets import bank_settings_for
from tools.bench import Row

GROUP = "hal_loop"
SCENARIO = "rack10"
NCH = 40
SEED = 1


def run(quick: bool) -> list[Row]:
    n_warm, n_ticks = (100, 500) if quick else (1000, 20_000)
    fused_s = 0.05 if quick else 1.0
    scen = get_scenario(SCENARIO)
    rate = scen.loop_rate_hz
    rows: list[Row] = []

    # --- stepped: the Python host loop through the Backend interface
    backend = SimBackend(SCENARIO, NCH, SEED)
    backend.open()
    bank = Bank(bank_settings_for(scen, NCH))
    try:
        runner.run_stepped(backend, bank, n_warm)
        t0 = time.perf_counter()
        lat = runner.run_stepped(backend, bank, n_ticks)
        wall = time.perf_counter() - t0
    finally:
        backend.close()
    p50, p99 = np.percentile(lat, [50, 99]) * 1e6
    stepped_rate = n_ticks / wall
    what = (f"SimBackend {SCENARIO} {NCH} ch, exchange (rig tick) + Bank.step, "
            f"{n_ticks} ticks after {n_warm} warm-up")
    rows.append(Row(GROUP, "stepped tick latency p50", p50, "us", what))
    rows.append(Row(GROUP, "stepped tick latency p99", p99, "us", what))
    rows.append(Row(GROUP, "stepped tick latency max", lat.max() * 1e6, "us",
                    f"{what}; shared machine: the max shows scheduler stalls"))
    rows.append(Row(GROUP, "stepped real-time factor", stepped_rate / rate, "x",
                    f"simulated s per wall s; {stepped_rate / 1e3:.1f} k ticks/s "
                    f"against {rate / 1e3:.0f} kHz"))

    # --- fused: rig and bank in one jitted loop, one thread and two, alternately
    runner.run_fused(scen, 0.02, NCH, SEED, threads=2)                # JIT load, first-call costs
    best = {1: 0.0, 2: 0.0}
    cpu = {1: math.inf, 2: math.inf}            # process CPU s per simulated s, least of the tries
    for _ in range(1 if quick else 3):
        for th in best:
            c0 = time.process_time()
            res, _ = runner.run_fused(scen, fused_s, NCH, SEED, threads=th)
            cpu[th] = min(cpu[th], (time.process_time() - c0) / fused_s)
            best[th] = max(best[th], res.realtime_factor)
    where = (f"run_fused {SCENARIO}, {NCH} ch at {rate / 1e3:.0f} kHz, {fused_s:g} s simulated, "
             f"full-rate records included, best of {1 if quick else 3}")
    for th, label in ((1, "1 thread"), (2, "2 threads")):
        rows.append(Row(GROUP, f"fused real-time factor {label}", best[th], "x",
                        f"{where}; threads={th}; {best[th] * rate / 1e3:.0f} k ticks/s; "
                        ">= 1 keeps up"))
    rows.append(Row(GROUP, "fused 2 threads / 1 thread", best[2] / best[1], "x",
                    "speed-up of two channel blocks on two threads, same run; 2 is the most "
                    "two cores give (less: per-tick costs paid per block, per-chunk split)"))
    rows.append(Row(GROUP, "fused 2 threads CPU / 1 thread CPU", cpu[2] / cpu[1], "x",
                    f"process CPU time per simulated s (whole run_fused call, evaluation "
                    f"included): {cpu[1]:.2f} s with 1 thread, {cpu[2]:.2f} s with 2; the "
                    "threading overhead whatever the machine's load (a busy machine shares "
                    "its cores per session: 2 threads then get no more CPU than 1)"))
    rows.append(Row(GROUP, "fused / stepped throughput", best[1] * rate / stepped_rate, "x",
                    "ticks per wall second, side by side, same scenario and channels, one thread"))
    return rows


if __name__ == "__main__":
    import sys
    for r in run(quick="--quick" in sys.argv):
        print(f"{r.group:8s} {r.name:28s} {r.value:10.3f} {r.unit:4s} {r.note}")
