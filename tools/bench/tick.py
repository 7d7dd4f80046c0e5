"""Bench group "tick": the bank tick, 40 channels, against what a Python user would write.

Data: T ticks x 40 channels of synthetic I/Q of locked channels, generated
once (seeded): amplitude 16384 codes (half scale, as the rig's front end
delivers), each channel at its own constant phase plus white phase noise of
1e-3 turn RMS (2.6 as of one-way delay), far inside the 0.5 fs lock window,
so every channel detects, locks and runs its servo.

Timed side by side, on the same ticks:

- attobus: `firmware.bank.tick_batch` over the T ticks (one call). First an
  untimed batch of noise-free ticks (JIT warm-up) takes every channel through
  detection to LOCKED, so the setpoint captured at detection is the mean
  phase and the servo works off its rails; that state is saved and every
  timed batch starts from it (the double integrators would otherwise walk to
  a rail over many repetitions of the same noise). Best of the timed batches.
  Per tick and channel it does more than the references below: return
  power, integer atan2, unwrap, slip check, the state ladder (the steady
  LOCKED path: the slow path's frequency trim runs every 2**14 ticks, not
  within the timed ticks, which start at tick 400), the
  biquad cascade (as many stages as the servo has sections: 3 for the
  default servo), noise-shaped 20-bit PZT code, the AOM word and its model
  step, and the spool offload every 2**8 ticks. One call runs all T
  ticks: the namedtuple unpacking (~0.8 us per call) is spent once, so this
  is the throughput of the passes themselves; a caller ticking once per call
  (`Bank.step`, the fused co-simulation) pays it every tick.
- simple_pid: 40 `simple_pid.PID` objects (the package a Python user picks),
  one `pid(measurement, dt)` call per channel per tick, fed by `math.atan2`
  and a Python unwrap per channel, output clamped and rounded to a 20-bit
  code. I/Q are handed over as Python ints (`.tolist()` once, outside the
  timing). `sample_time=None`: the PID computes on every call.
- numpy: the same tick in float64, vectorised over the 40 channels, one
  Python iteration per tick: `np.arctan2`, unwrap by difference, the bank's
  own cascade, the same stages (its Q2.29 coefficients as float64 arrays, direct
  form 1, clip per stage), then plain rounding to 20-bit DAC codes (no noise
  shaping, no state ladder). I/Q converted to float64 once, outside. Started
  from the bank's locked state, it tracks the bank's PZT codes within a few
  LSB (tests/test_bench.py checks it), so both do the same servo work.

Figures: M channel-updates/s (ticks x channels / s) of each and the ratios.
Also the latency of one 40-channel tick called from Python (`Bank.step`),
p50/p99 over single calls. quick=True: 200 ticks, 200 latency samples.
"""
from __future__ import annotations

import math
import time

import numpy as np

from firmware import units
from firmware.bank import Bank, BankSettings, PZT_DROP_BITS, PZT_MID, pzt_unit_s, tick_batch
from firmware.biquad import COEFF_ONE
from firmware.faults import LOCKED
from tools.bench import Row, best_time

GROUP = "tick"
NCH = 40
AMPLITUDE = 16384              # ADC codes: half scale
PHASE_NOISE_TURN = 1e-3        # RMS, white
TWO_PI = 2.0 * math.pi


def synthetic_iq(n_ticks: int, n_ch: int = NCH, noise_turn: float = PHASE_NOISE_TURN,
                 seed: int = 20240615):
    """int16 [T, N] I/Q of locked channels: a constant phase per channel (the same
    for every call with the same seed) + white phase noise of noise_turn RMS."""
    rng = np.random.default_rng(seed)
    phi0 = rng.uniform(0.0, 1.0, n_ch)
    phi = TWO_PI * (phi0[None, :] + noise_turn * rng.standard_normal((n_ticks, n_ch)))
    i = np.round(AMPLITUDE * np.cos(phi)).astype(np.int16)
    q = np.round(AMPLITUDE * np.sin(phi)).astype(np.int16)
    return i, q


def locked_bank(settings: BankSettings | None = None) -> Bank:
    """A bank ticked on noise-free `synthetic_iq` through detection to LOCKED
    (plus 1 ms): setpoints at each channel's mean phase, servos mid-range."""
    settings = settings or BankSettings(n_channels=NCH)
    bank = Bank(settings)
    n = int(round((settings.detect_time_s + settings.lock_time_s + 1e-3) * settings.loop_rate_hz))
    i, q = synthetic_iq(n, settings.n_channels, noise_turn=0.0)
    out = np.empty((n, settings.n_channels), np.int32)
    tick_batch(bank.config, bank.state, i, q, out, out.copy(), out.copy())
    return bank


class NumpyTick:
    """The tick in float64 numpy, vectorised over channels (the reference).

    Same cascade as the bank: the bank's Q2.29 coefficients and limits as
    float64 arrays [stage, coefficient, channel], direct form 1, clip per
    stage; phase in codes of 2**-32 turn, PZT code rounded to 20 bits.
    """

    def __init__(self, bank: Bank):
        cfg, st = bank.config, bank.state
        self.c = cfg.coeffs.astype(np.float64) / COEFF_ONE          # [S, 5, N]
        self.lim = cfg.limits.astype(np.float64)                     # [S, 2, N]
        self.h = st.hist.astype(np.float64)                          # [S, 4, N]
        self.setpoint = st.setpoint.astype(np.float64)               # codes
        self.acc = st.phase_acc.astype(np.float64)
        self.last = st.phase_last.astype(np.float64)
        self.code_scale = 2.0 ** -PZT_DROP_BITS
        self.turn = float(units.TURN)

    def step(self, i, q):
        ph = np.arctan2(q, i) * (self.turn / TWO_PI)                 # codes, [-T/2, T/2]
        d = ph - self.last
        d -= self.turn * np.round(d / self.turn)                     # unwrap by difference
        self.acc += d
        self.last = ph
        x = self.setpoint - self.acc
        c, h, lim = self.c, self.h, self.lim
        for s in range(c.shape[0]):
            y = c[s, 0] * x + c[s, 1] * h[s, 0] + c[s, 2] * h[s, 1] - c[s, 3] * h[s, 2] - c[s, 4] * h[s, 3]
            np.clip(y, lim[s, 0], lim[s, 1], out=y)
            h[s, 1] = h[s, 0]
            h[s, 0] = x
            h[s, 3] = h[s, 2]
            h[s, 2] = y
            x = y
        return np.clip(np.round(x * self.code_scale), -PZT_MID, PZT_MID - 1) + PZT_MID

    def run(self, i_f, q_f, out):
        for t in range(i_f.shape[0]):
            out[t] = self.step(i_f[t], q_f[t])


class SimplePidTick:
    """40 simple_pid.PID objects, atan2 and unwrap in Python per channel."""

    def __init__(self, bank: Bank, rate_hz: float):
        from simple_pid import PID
        # A PI with the bank servo's proportional gain and integrator corner, in
        # turns in, PZT 32-bit command units out; setpoint = the captured phase.
        turn_to_cmd = units.ONEWAY_S_PER_TURN / pzt_unit_s()
        kp = 0.33 * turn_to_cmd
        ki = kp * TWO_PI * 9.2e3
        acc = bank.state.phase_acc.astype(np.float64) / units.TURN
        sp = bank.state.setpoint.astype(np.float64) / units.TURN
        self.pids = [PID(kp, ki, 0.0, setpoint=float(sp[c]), sample_time=None,
                         output_limits=(-2.0 ** 31, 2.0 ** 31 - 1)) for c in range(NCH)]
        self.acc = [float(a) for a in acc]
        self.last = [float(p) / units.TURN for p in bank.state.phase_last]
        self.dt = 1.0 / rate_hz

    def run(self, i_rows, q_rows, out_rows):
        pids, acc, last, dt = self.pids, self.acc, self.last, self.dt
        scale = 2.0 ** -PZT_DROP_BITS
        for i_row, q_row, out in zip(i_rows, q_rows, out_rows):
            for c in range(NCH):
                ph = math.atan2(q_row[c], i_row[c]) / TWO_PI           # turns
                d = ph - last[c]
                d -= round(d)
                acc[c] += d
                last[c] = ph
                y = pids[c](acc[c], dt)
                out[c] = min(max(round(y * scale), -PZT_MID), PZT_MID - 1) + PZT_MID


def run(quick: bool) -> list[Row]:
    n_ticks = 200 if quick else 2000
    n_lat = 200 if quick else 20_000
    rep = 3 if quick else 7
    settings = BankSettings(n_channels=NCH)
    rate = settings.loop_rate_hz
    adc_i, adc_q = synthetic_iq(n_ticks)
    pzt = np.empty((n_ticks, NCH), np.int32)
    spool = np.empty_like(pzt)
    aom = np.empty_like(pzt)
    rows: list[Row] = []

    # --- attobus: warm the JIT and lock every channel on the noise-free phase (so
    # the setpoint captured at detection is the channel's mean phase and the
    # servo sits off its rails), then time batches of the noisy ticks, each
    # from that same locked state.
    bank = locked_bank(settings)
    n_locked = int(np.sum(bank.state.chan_state == LOCKED))
    snapshot = [a.copy() for a in bank.state]

    def restore():
        for a, saved in zip(bank.state, snapshot):
            a[...] = saved

    t_bank = float("inf")
    for _ in range(rep * 3):
        restore()
        t0 = time.perf_counter()
        tick_batch(bank.config, bank.state, adc_i, adc_q, pzt, spool, aom)
        t_bank = min(t_bank, time.perf_counter() - t0)
    railed = float(np.mean((pzt == 0) | (pzt == 2 * PZT_MID - 1)))
    still_locked = int(np.sum(bank.state.chan_state == LOCKED))
    restore()
    mcu = lambda t: n_ticks * NCH / t / 1e6
    rows.append(Row(GROUP, "bank tick_batch", mcu(t_bank), "M channel-updates/s",
                    f"{NCH} ch x {n_ticks} ticks per call, {n_locked}/{NCH} LOCKED before and "
                    f"{still_locked}/{NCH} after, PZT codes on a rail {100 * railed:.0f} %, one core, "
                    f"{t_bank / (n_ticks * NCH) * 1e9:.2f} ns per channel-update; "
                    ">= 50 M/s goal, 100 M aim"))

    # --- numpy float64, vectorised over channels, Python loop over ticks
    ref = NumpyTick(bank)
    i_f = adc_i.astype(np.float64)
    q_f = adc_q.astype(np.float64)
    out_np = np.empty((n_ticks, NCH))
    ref.run(i_f[:2], q_f[:2], out_np[:2])                     # first-call costs out of the way
    t_np = best_time(lambda: ref.run(i_f, q_f, out_np), repeat=max(2, rep // 2))
    rows.append(Row(GROUP, "numpy float64 tick", mcu(t_np), "M channel-updates/s",
                    f"vectorised over {NCH} ch, Python loop over ticks: arctan2, unwrap, "
                    f"{bank.config.coeffs.shape[0]}-stage biquad cascade, clip, rounding to "
                    f"20-bit codes"))
    rows.append(Row(GROUP, "bank speed-up vs numpy", t_np / t_bank, "x",
                    "side by side, same I/Q"))

    # --- simple_pid: 40 PID objects, per-channel Python
    try:
        ref_pid = SimplePidTick(bank, rate)
    except ImportError:
        rows[0].note += "; simple_pid not installed: its comparison skipped"
        ref_pid = None
    if ref_pid is not None:
        il, ql = adc_i.tolist(), adc_q.tolist()
        out_l = [[0] * NCH for _ in range(n_ticks)]
        n_pid = max(20, n_ticks // 4) if not quick else 50
        ref_pid.run(il[:2], ql[:2], out_l[:2])
        t_pid = best_time(lambda: ref_pid.run(il[:n_pid], ql[:n_pid], out_l[:n_pid]),
                          repeat=max(2, rep // 2)) * n_ticks / n_pid
        rows.append(Row(GROUP, "simple_pid x40 tick", mcu(t_pid), "M channel-updates/s",
                        f"{NCH} simple_pid.PID, one pid(x, dt) per channel per tick, math.atan2 "
                        f"and unwrap in Python, clamp and round to codes ({n_pid} ticks timed)"))
        rows.append(Row(GROUP, "bank speed-up vs simple_pid", t_pid / t_bank, "x",
                        "side by side, same I/Q"))

    # --- latency of one 40-channel tick called from Python
    bank.step(adc_i[0], adc_q[0])
    lat = np.empty(n_lat)
    clock = time.perf_counter
    for k in range(n_lat):
        a = adc_i[k % n_ticks]
        b = adc_q[k % n_ticks]
        t0 = clock()
        bank.step(a, b)
        lat[k] = clock() - t0
    p50, p99 = np.percentile(lat, [50, 99]) * 1e6
    what = f"Bank.step, {NCH} ch, {n_lat} single calls from Python"
    rows.append(Row(GROUP, "Bank.step latency p50", p50, "us", what))
    rows.append(Row(GROUP, "Bank.step latency p99", p99, "us",
                    f"{what}; max {lat.max() * 1e6:.1f} us"))
    return rows


if __name__ == "__main__":
    import sys
    for r in run(quick="--quick" in sys.argv):
        print(f"{r.group:6s} {r.name:32s} {r.value:12.4g} {r.unit:20s} {r.note}")
