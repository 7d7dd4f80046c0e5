"""Bench group "fsm": what the channel state machines cost in the tick.

Side by side, same process, same data: `firmware.bank.tick_batch` over T
ticks of 40 locked channels (the I/Q of tools.bench.tick: each channel at
its own constant phase plus 1e-3 turn RMS of white phase noise), each timed
batch starting from the same locked state, with

- the ladder (BankSettings(state_machine=True), the default): every channel
  goes through pass 2, the steady LOCKED test inline, the rest through
  `ladder_slow`;
- the bare tick (state_machine=False, same config otherwise): pass 2 only
  commits the sample and forms the error.

The ratio is the ladder's cost on a steady bank (target: at most 20 %).
A third figure times the ladder with 4 of the 40 channels in calibration
(their AOM steps, accumulators and the slow path every tick), the busiest
a hot swap makes a bank. quick=True: 200 ticks, 3 repetitions.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from firmware.bank import Bank, BankSettings, tick_batch
from firmware.faults import LOCKED, CALIBRATING
from tools.bench import Row
from tools.bench.tick import NCH, locked_bank, synthetic_iq

GROUP = "fsm"


def _best(cfg, st, snapshot, i, q, outs, rep):
    best = float("inf")
    for _ in range(rep):
        for a, saved in zip(st, snapshot):
            a[...] = saved
        t0 = time.perf_counter()
        tick_batch(cfg, st, i, q, *outs)
        best = min(best, time.perf_counter() - t0)
    return best


def run(quick: bool) -> list[Row]:
    n_ticks = 200 if quick else 2000
    rep = 3 if quick else 15
    settings = BankSettings(n_channels=NCH)
    bank = locked_bank(settings)
    n_locked = int(np.sum(bank.state.chan_state == LOCKED))
    i, q = synthetic_iq(n_ticks)
    outs = tuple(np.empty((n_ticks, NCH), np.int32) for _ in range(3))
    bare_cfg = replace(settings, state_machine=False).build()
    snap = [a.copy() for a in bank.state]
    st = bank.state
    tick_batch(bare_cfg, st, i[:2], q[:2], *(o[:2] for o in outs))       # JIT warm-up
    # interleave the two variants so load on the shared machine hits both alike
    t_fsm = t_bare = float("inf")
    for _ in range(3):
        t_fsm = min(t_fsm, _best(bank.config, st, snap, i, q, outs, rep))
        t_bare = min(t_bare, _best(bare_cfg, st, snap, i, q, outs, rep))
    mcu = lambda t: n_ticks * NCH / t / 1e6
    cost = t_fsm / t_bare - 1.0

    # 4 channels calibrating: blades reported by serial, 4 of them new
    cal_bank = Bank(BankSettings(n_channels=NCH, calibrate="always"))
    for a, saved in zip(cal_bank.state, snap):
        a[...] = saved
    cs = cal_bank.state
    for c in range(4):
        cs.chan_state[c] = CALIBRATING
        cs.state_ticks[c] = 0
        cs.cal[:, c] = 0
    cal_snap = [a.copy() for a in cs]
    t_cal = float("inf")
    for _ in range(3):
        t_cal = min(t_cal, _best(cal_bank.config, cs, cal_snap, i, q, outs, rep))
    still = int(np.sum(cs.chan_state[:4] == CALIBRATING))
    for a, saved in zip(st, snap):
        a[...] = saved
    return [
        Row(GROUP, "tick with state machines", mcu(t_fsm), "M channel-updates/s",
            f"{NCH} ch x {n_ticks} ticks, {n_locked}/{NCH} LOCKED, steady; one core"),
        Row(GROUP, "tick without state machines", mcu(t_bare), "M channel-updates/s",
            "state_machine=False: pass 2 commits the sample only"),
        Row(GROUP, "state-machine cost", 100 * cost, "%",
            "tick time with / without the ladder - 1, side by side; target <= 20 %"),
        Row(GROUP, "tick, 4 of 40 calibrating", mcu(t_cal), "M channel-updates/s",
            f"4 channels in CALIBRATING (slow path every tick; {still} still calibrating "
            f"after the batch), 36 LOCKED"),
        Row("fsm", "tick with state machines vs without (throughput ratio)", t_bare / t_fsm, "x",
            f"throughput ratio with/without the ladder (tools/bench/fsm.py); >= 0.83 wanted"),
    ]


if __name__ == "__main__":
    import sys
    for r in run(quick="--quick" in sys.argv):
        print(f"{r.group:6s} {r.name:40s} {r.value:12.4g} {r.unit:20s} {r.note}")
