"""Closed-loop runs of a scenario: the engine behind `attobus run`.

Two paths with bit-identical results (a test proves it):
  fused    rig and bank in one jitted loop (tools.cosim), chunk by chunk;
  stepped  the bank's Python host loop through a `hal` Backend, tick by tick
           (any backend: sim://, serial://).
Between chunks the runner applies scheduled events (blade insert/remove and
injected faults), reports progress, and keeps full-rate records of the
analysis window. Residuals are out-of-loop: the rig's true one-way delay at
each blade, never the bank's in-loop error.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from firmware.bank import Bank, BankSettings, PZT_MID, SPOOL_MID
from firmware.faults import LOCKED, STATE_NAMES, flag_names
from hal.frames import OutFrame
from sim_hw.scenarios import hotswap_schedule
from tools import analysis


@dataclass
class ChannelResult:
    ch: int
    state: str
    residual_as_rms: float | None
    tdev_1s_as: float | None
    lock_time_s: float | None
    slips: int
    pzt_peak_frac: float | None
    faults: list = field(default_factory=list)
    met_bar: bool = False
    why_not: str = ""

    def as_dict(self):
        d = dict(self.__dict__)
        return d


@dataclass
class RunResult:
    scenario: str
    seed: int
    loop_rate_hz: float
    realtime_factor: float
    duration_s: float
    open_loop: bool
    channels: list
    events: list = field(default_factory=list)

    @property
    def all_met(self) -> bool:
        return all(c.met_bar for c in self.channels)

    def as_dict(self):
        return {"scenario": self.scenario, "seed": self.seed, "loop_rate_hz": self.loop_rate_hz,
                "realtime_factor": self.realtime_factor, "duration_s": self.duration_s,
                "open_loop": self.open_loop, "all_met": self.all_met,
                "channels": [c.as_dict() for c in self.channels], "events": self.events}


class Recorder:
    """Full-rate records [T, N] for the whole run (memory checked up front)."""

    BYTES_PER_SAMPLE = 8 + 4 + 4 + 1 + 8 + 4     # truth, pzt, spool, state, error, live faults
    MAX_BYTES = 3 << 30

    def __init__(self, n_ticks, n):
        need = n_ticks * n * self.BYTES_PER_SAMPLE
        if need > self.MAX_BYTES:
            raise ValueError(f"a full-rate record of {n_ticks} ticks x {n} channels needs "
                             f"{need / 2**30:.1f} GiB (limit {self.MAX_BYTES / 2**30:.0f} GiB): "
                             "shorten --duration or use fewer --channels")
        self.truth = np.empty((n_ticks, n))
        self.pzt = np.empty((n_ticks, n), np.int32)
        self.spool = np.empty((n_ticks, n), np.int32)
        self.state = np.empty((n_ticks, n), np.uint8)
        self.err = np.empty((n_ticks, n), np.int64)
        self.faults = np.zeros((n_ticks, n), np.uint32)


def locked_segment(state_col, rate_hz, settle_s):
    """(start, stop) of the longest run of LOCKED ticks, after settle_s of it."""
    locked = np.concatenate([[False], state_col == LOCKED, [False]])
    edges = np.flatnonzero(np.diff(locked.astype(np.int8)))
    if edges.size == 0:
        return None
    starts, stops = edges[0::2], edges[1::2]
    i = int(np.argmax(stops - starts))
    a = starts[i] + int(settle_s * rate_hz)
    return (a, stops[i]) if stops[i] - a > 16 else None


def evaluate(scenario, rec: Recorder, rate_hz, slips, fault_log, open_loop, lock_times,
             settle_s=0.05, event_log=None):
    """Per-channel results against the scenario's bar, out of loop. With
    blade insertions (event_log entries of kind "insert"), every insertion
    must reach LOCKED within the scenario's bar_lock_time_s."""
    out = []
    n = rec.truth.shape[1]
    for c in range(n):
        truth = rec.truth[:, c]
        if open_loop:
            seg = (0, truth.shape[0])
        else:
            seg = locked_segment(rec.state[:, c], rate_hz, settle_s)
        res = tdev = peak = None
        why = []
        if seg is not None:
            x = truth[seg[0]:seg[1]]
            x = x[np.isfinite(x)]
            if x.size > 16:
                x = x - x.mean()
                res = analysis.residual_rms(x, rate_hz, scenario.residual_band_lo_hz,
                                            min(scenario.residual_band_hi_hz, rate_hz / 2)) / 1e-18
                t = analysis.tdev_at(x, rate_hz, 1.0)
                tdev = None if not math.isfinite(t) else t / 1e-18
            p = rec.pzt[seg[0]:seg[1], c]
            peak = float(np.max(np.abs(p.astype(np.int64) - PZT_MID)) / PZT_MID) if p.size else None
        state = STATE_NAMES[int(rec.state[-1, c])]
        if open_loop:
            met = False
            why.append("open loop")
        else:
            if seg is None or res is None:
                why.append("never held lock")
            bar = scenario.bar_residual_rms_s
            if bar is not None and res is not None and res > bar / 1e-18:
                why.append(f"residual {res:.1f} as > {bar / 1e-18:.0f} as")
            if scenario.bar_slips is not None and slips[c] > scenario.bar_slips:
                why.append(f"{slips[c]} slips")
            if scenario.bar_pzt_peak_frac is not None and peak is not None and peak > scenario.bar_pzt_peak_frac:
                why.append(f"PZT peak {100 * peak:.0f} % > {100 * scenario.bar_pzt_peak_frac:.0f} %")
            lock_bar = getattr(scenario, "bar_lock_time_s", None)
            for ev in event_log or []:
                if ev["ch"] != c or ev["kind"] != "insert" or lock_bar is None:
                    continue
                lt = ev.get("lock_time_s")
                if lt is None and ev["t_s"] + lock_bar <= rec.truth.shape[0] / rate_hz:
                    why.append(f"no lock after the insertion at {ev['t_s']:.3f} s")
                elif lt is not None and lt > lock_bar:
                    why.append(f"lock {1e3 * lt:.0f} ms after the insertion at {ev['t_s']:.3f} s "
                               f"> {1e3 * lock_bar:.0f} ms")
            met = not why
        out.append(ChannelResult(c, state, res, tdev, lock_times[c], int(slips[c]), peak,
                                 fault_log.get(c, []), met, "; ".join(why)))
    return out


def default_bank_settings(scenario, n_channels):
    """The scenario's servo preset, with the ladder set for its links: long
    links (round trips up to ms, a slower loop) get chips longer than their
    round trip for a calibration (off by default: "never"), no slew or step
    check (the unwrapper's half turn is the limit; a 100 km link moves 0.08
    turn per tick) and lock times of many loop time constants (the lock
    windows come with the servo: tools.presets)."""
    from dataclasses import replace
    from tools.presets import bank_settings_for
    s = bank_settings_for(scenario, n_channels)
    long_links = any(g != "rack" for g in scenario.geometries)
    if long_links:
        tau_rt = 2 * scenario.group_delay_s_per_m * max(scenario.link_length_max_m,
                                                         max(scenario.link_lengths_m, default=0.0))
        T = 1.0 / scenario.loop_rate_hz
        s = replace(s, calibrate="never", cal_max_tau_rt_s=1.5 * tau_rt,
                    cal_chip_s=tau_rt + 3 * T, cal_skip_s=tau_rt + 2 * T,
                    max_slew_s_per_s=1.0, step_detect_s=1e-12, lock_time_s=20e-3,
                    loss_time_s=2e-3)
    return s


def scheduled_events(scenario, n_channels, duration_s, seed):
    """Blade removals and insertions of a hot-swap scenario as runner events."""
    from tools.inject import BladeEvent
    return [(t, BladeEvent(t, ch, kind, params))
            for t, ch, kind, params in hotswap_schedule(scenario, n_channels, duration_s, seed)]


def default_threads(n_channels):
    """Threads of a fused run by default: 2 when this process may use at
    least 2 CPUs and there are at least 8 channels (fewer do not pay for
    the per-chunk split), else 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:                      # not Linux
        cpus = os.cpu_count() or 1
    return 2 if cpus >= 2 and n_channels >= 8 else 1


def run_fused(scenario, duration_s, n_channels, seed, open_loop=False, bank_settings=None,
              chunk_s=0.05, progress=None, events=None, threads=None):
    """Rig + bank in one jitted loop; returns (RunResult, Recorder).

    events: [(t_s, fn(rig_cfg, rig_st, bank))] applied between chunks at
    t_s (the chunk is cut there). A fn with `channel`, `kind` and `flag`
    attributes (tools.inject.FaultEvent, BladeEvent) is also reported in
    RunResult.events with its detection time (first tick at or after t_s
    with `flag` live on that channel) or, for an insertion, its lock time.
    A hot-swap scenario adds its blade schedule (hotswap_schedule).

    threads: channel blocks run side by side, each chunk (tools.cosim.
    run_blocks), bit-identical to one thread; None: default_threads(N)
    (2 on a machine with 2 usable CPUs and N >= 8, else 1); at most N.
    Events, progress and the records see the whole bank between chunks."""
    from concurrent.futures import ThreadPoolExecutor
    from sim_hw.rig import build_rig
    from tools.cosim import LayoutCache, channel_blocks, cosim_block, run_blocks
    rate = scenario.loop_rate_hz
    n_ticks = int(round(duration_s * rate))
    if n_ticks < 1:
        raise ValueError(f"--duration {duration_s} s is shorter than one tick")
    threads = default_threads(n_channels) if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    rig_cfg, rig_st = build_rig(scenario, n_channels, seed)
    bank = Bank(bank_settings or default_bank_settings(scenario, n_channels))
    n = n_channels
    rec = Recorder(n_ticks, n)
    records = (rec.truth, rec.pzt, rec.spool, rec.state, rec.err, rec.faults)
    # pzt, spool, aom (the codes carried between chunks), adc_i, adc_q, truth, serial (scratch)
    vectors = (np.full(n, PZT_MID, np.int32), np.full(n, SPOOL_MID, np.int32),
               np.zeros(n, np.int32), np.zeros(n, np.int16), np.zeros(n, np.int16),
               np.zeros(n), np.zeros(n, np.uint64))
    servo_on = not open_loop
    blocks = channel_blocks(n, threads)
    chunk = max(1, int(round(chunk_s * rate)))
    lock_times = [None] * n
    fault_log: dict = {}
    # Compile (or load from the cache) before the clock starts: the real-time
    # factor is the loop's, not the JIT's. Zero ticks change nothing; a block
    # has the whole run's types, so this one signature serves every block.
    cosim_block(rig_cfg, rig_st, bank.config, bank.state, *vectors, servo_on, *records, 0, 0, 0)
    pool = ThreadPoolExecutor(len(blocks) - 1) if len(blocks) > 1 else None
    layouts = LayoutCache()
    t_wall = time.perf_counter()
    k = 0
    events = list(events or [])
    if getattr(scenario, "hotswap_mean_interval_s", 0) > 0:
        events += scheduled_events(scenario, n, duration_s, seed)
    pending = sorted(events, key=lambda e: e[0])
    applied = []
    try:
        while k < n_ticks:
            stop = min(n_ticks, k + chunk)
            while pending and pending[0][0] * rate <= k:
                t_ev, fn = pending.pop(0)
                fn(rig_cfg, rig_st, bank)
                applied.append((k, fn))
            if pending:
                stop = min(stop, max(k + 1, int(math.ceil(pending[0][0] * rate))))
            sl = slice(k, stop)
            if pool is None:
                cosim_block(rig_cfg, rig_st, bank.config, bank.state, *vectors, servo_on,
                            *records, k, stop - k, 0)
            else:
                run_blocks(pool, blocks, rig_cfg, rig_st, bank.config, bank.state, vectors,
                           servo_on, records, k, stop - k, layouts)
            _log_chunk(bank, rec, sl, rate, lock_times, fault_log)
            k = stop
            if progress:
                progress(k / rate, bank, rec, sl)
    finally:
        if pool is not None:
            pool.shutdown()
    wall = time.perf_counter() - t_wall
    event_log = event_report(applied, rec, rate)
    results = evaluate(scenario, rec, rate, bank.state.slip_count, fault_log, open_loop, lock_times,
                       event_log=event_log)
    return RunResult(scenario.name, seed, rate, (n_ticks / rate) / wall, n_ticks / rate,
                     open_loop, results, event_log), rec


def event_report(applied, rec, rate):
    """[{t_s, ch, kind, flag, t_detect_s, latency_s[, lock_time_s]}] of the
    applied events that name a channel: detection = the first tick at or
    after the event with its flag live on its channel (None: not seen);
    an insertion also gets the time from the event to LOCKED."""
    from firmware.faults import FLAG_BITS
    out = []
    n_ticks = rec.state.shape[0]
    for k0, fn in applied:
        ch = getattr(fn, "channel", None)
        if ch is None or not 0 <= ch < rec.state.shape[1]:
            continue
        flag = getattr(fn, "flag", None)
        d = {"t_s": round(k0 / rate, 6), "ch": int(ch), "kind": getattr(fn, "kind", "?"),
             "flag": flag, "t_detect_s": None, "latency_s": None}
        # look until the next event on this channel (or the end)
        k1 = min([k for k, f in applied if k > k0 and getattr(f, "channel", None) == ch] + [n_ticks])
        if flag is not None:
            hit = np.flatnonzero(rec.faults[k0:k1, ch] & FLAG_BITS[flag])
            if hit.size:
                d["t_detect_s"] = round((k0 + int(hit[0])) / rate, 6)
                d["latency_s"] = (int(hit[0]) + 1) / rate
        if d["kind"] == "insert":
            hit = np.flatnonzero(rec.state[k0:k1, ch] == LOCKED)
            d["lock_time_s"] = (int(hit[0]) + 1) / rate if hit.size else None
        out.append(d)
    return out


def _log_chunk(bank, rec, sl, rate, lock_times, fault_log):
    st = rec.state[sl]
    for c in range(st.shape[1]):
        if lock_times[c] is None:
            hit = np.flatnonzero(st[:, c] == LOCKED)
            if hit.size:
                lock_times[c] = (sl.start + int(hit[0])) / rate
    _, sticky = bank.read_faults()
    t = sl.stop / rate
    for c in np.flatnonzero(sticky):
        for name in flag_names(int(sticky[c])):
            log = fault_log.setdefault(int(c), [])
            if not log or log[-1]["flag"] != name or t - log[-1]["t_s"] > 0.5:
                log.append({"flag": name, "t_s": round(t, 6)})


def run_stepped(backend, bank: Bank, n_ticks, rec: Recorder | None = None, open_loop=False):
    """The Python host loop through a Backend; returns per-tick latencies (s)."""
    n = backend.capabilities.n_channels
    out = OutFrame.mid_scale(n)
    lat = np.empty(n_ticks)
    for k in range(n_ticks):
        t0 = time.perf_counter()
        f = backend.exchange(out)
        if not open_loop:
            out.pzt_code, out.spool_code, out.aom_ftw = bank.step(f.adc_i, f.adc_q,
                                                                  getattr(f, "blade_serial", None))
        lat[k] = time.perf_counter() - t0
        if rec is not None:
            if f.true_delay_s is not None:
                rec.truth[k] = f.true_delay_s
            rec.pzt[k] = out.pzt_code
            rec.spool[k] = out.spool_code
            rec.state[k] = bank.state.chan_state
            rec.err[k] = bank.state.setpoint - bank.state.phase_acc
            rec.faults[k] = bank.state.faults_live
    return lat
