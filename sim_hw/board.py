"""The board emulator: a scenario's rig served through the attobus wire protocol.

`Board` is the DAC/ADC board of docs/protocol.md with the simulated rig behind
its converters; `BoardServer` puts it on a pseudo-terminal (`os.openpty`) or a
TCP socket, behind an emulated link (`sim_hw.link`), on the wall clock. The
host talks to it through real pyserial (`serial://PTY` or
`serial://socket://HOST:PORT`) exactly as it would to hardware.

Imports. sim_hw and hal meet only through the Backend interface, with one
documented exception (docs/protocol.md section 17): the board speaks the wire
protocol, so it uses the pure protocol modules hal.wire, hal.cobs,
hal.crc16, hal.auth and hal.flash_image (codec, HMAC, image format; no
backend class). It never imports firmware.

Time. Everything the board does happens at an exact board time (seconds
since power-up): tick i of the front end covers [i/R, (i+1)/R), R =
`board_rate_hz` (CAPS loop_rate_hz). The server calls `advance(t)` and
`receive(data, t)` in time order, each at the time the emulated link
delivers; the board runs the rig up to that time in one jitted call per
stretch of constant codes, so a late wake-up of the emulator process never
changes the physics, only when bytes appear on the port.

Front end and frames. The rig runs at R; every `stream_divider` ticks (D)
the board sends one ADC frame whose I/Q is the mean of the D samples (a
boxcar decimator, as a board with a 100 kHz front end streaming at R/D
would) and whose tick is that of its last sample. A DAC frame is applied
from the next front-end tick after it arrives (the rig latches codes for
one tick: a DAC's own conversion delay). So the host loop runs at R/D with
a delay of (arrival time - frame time) + 1/R, a fraction of a frame when
the link is fast: tools.hil designs the servo for exactly that.

R defaults to the frame rate times the largest D <= 100 kHz / frame rate that
keeps the rig inside RIG_BUDGET of one core (cost model RIG_TICK_S +
N RIG_CHANNEL_TICK_S per tick): about 70 kHz for 2 channels, 11 kHz for 40. The rig's physics is
discretised exactly at any R (sim_hw.rig); the truth between frames is kept
as a per-frame mean and mean square (below), so the intra-frame motion a
slow loop cannot see still counts in the residual.

Ground truth (test only). With `truth_path`, the board writes, for every
ADC frame, the true one-way delay deviation of each channel (the mean over
the frame and the mean square deviation about it) into a memory-mapped file
(layout `TRUTH_*` below, docs/hil.md). The host's serial backend reads it
beside the frame for out-of-loop residuals; it never reaches the servo and
never crosses the link.

Safe state (docs/protocol.md section 11): RUN -> HOLD after watchdog_ms of
host silence -> RAMP after hold_ms -> SAFE after ramp_ms; HELLO restarts.
The ramp is evaluated per front-end tick inside the jitted kernel.
"""
from __future__ import annotations

import gc
import math
import mmap
import os
import select
import socket
import struct
import threading
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numba import njit

from hal import auth, wire
from hal import flash_image as fi
from hal.wire import (BoardFlags, MsgType, NackReason, WatchdogState, OverrideMode,
                      STATUS_COUNTERS)
from .link import PROFILES, LinkDirection, LinkProfile, frame_rate_for, parse_faults
from .rig import build_rig, insert_blade, remove_blade, rig_step
from .scenarios import get_scenario, hotswap_schedule

__all__ = ["Board", "BoardOptions", "BoardServer", "FileFlashMedium", "TruthWriter", "PowerLost",
           "RIG_BUDGET", "TRUTH_MAGIC", "default_rates"]

RIG_BUDGET = 0.15                  # share of one core the emulator's rig may take
RIG_TICK_S = 1.5e-6                # rig cost per tick (the call of rig_step) ...
RIG_CHANNEL_TICK_S = 0.3e-6        # ... plus per channel-tick (a loaded 2-core PC)
FW_VERSION = 0x00010000
HEARTBEAT_PERIOD_S = 0.1           # board heartbeats while not streaming
NACK_DAC_PERIOD_S = 0.1            # DAC NACKs rate-limited (docs/protocol.md 8.7)
TICK_RING = 4096                   # frames whose production time PING can look up
_F = {f.name: int(f) for f in BoardFlags}       # plain ints: IntFlag arithmetic is slow per frame
PORT_BUFFER = 1 << 16              # bytes the port holds for a host that is not reading
LATE_LIMIT_S = 0.05                # an emulator this far behind the wall clock skips frames

# Truth file (docs/hil.md): header, then frame_tick int64[cap], mean f64[cap, N], msq f64[cap, N].
TRUTH_MAGIC = b"ATBTRUTH"
TRUTH_HEAD = struct.Struct("<8sIIII dd 24x")       # magic, version, nch, cap, reserved, rates
TRUTH_HEAD_LEN = 64
TRUTH_VERSION = 1
TRUTH_CAPACITY = 1 << 14


# ----------------------------------------------------------------------------- kernel

@njit(cache=True, inline="always")
def _ramp_code(held, safe, pos, length):
    # held + (safe - held) * pos / length, rounded toward held; int64 (codes <= 32 bit,
    # pos <= 2^24 ticks: the product stays below 2^57)
    d = safe - held
    v = (abs(d) * pos) // length
    return held + v if d >= 0 else held - v


@njit(cache=True)
def advance_kernel(cfg, st, n, pzt, spool, aom, chg_tick, chg_codes, n_chg, ramp_from, ramp_to,
                   ramp_pos, ramp_len, adc_i, adc_q, truth, acc_iq, acc_t, acc_tn, acc_over):
    """Run the rig n ticks and accumulate the frame sums (no allocation); returns the
    number of code changes consumed.

    pzt, spool, aom: int32[N] codes latched at every tick. chg_tick[:n_chg]
    (non-decreasing) and chg_codes[:n_chg, 3, N]: code changes; change j is copied
    into pzt/spool/aom before the rig call whose tick index (st.tick before the
    call) is >= chg_tick[j], so a DAC frame that arrives during tick c is latched
    by call c and acts from tick c + 1. ramp_len > 0: instead, tick k latches the
    ramp codes at position ramp_pos + k + 1 of ramp_len from ramp_from[3, N] to
    ramp_to[3, N] (int64; rows pzt, spool, aom); pzt/spool/aom keep the last ones.
    acc_iq[2, N]: sums of I and Q. acc_t[3, N]: reference (first truth sample of
    the frame), sum and sum of squares of truth - reference. acc_tn[N]: finite
    truth samples. acc_over[N]: 1 if any sample clipped.
    """
    N = pzt.shape[0]
    j = 0
    for k in range(n):
        while j < n_chg and chg_tick[j] <= st.tick[0]:
            for c in range(N):
                pzt[c] = chg_codes[j, 0, c]
                spool[c] = chg_codes[j, 1, c]
                aom[c] = chg_codes[j, 2, c]
            j += 1
        if ramp_len > 0:
            pos = min(ramp_pos + k + 1, ramp_len)
            for c in range(N):
                pzt[c] = _ramp_code(ramp_from[0, c], ramp_to[0, c], pos, ramp_len)
                spool[c] = _ramp_code(ramp_from[1, c], ramp_to[1, c], pos, ramp_len)
                aom[c] = _ramp_code(ramp_from[2, c], ramp_to[2, c], pos, ramp_len)
        rig_step(cfg, st, pzt, spool, aom, adc_i, adc_q, truth)
        for c in range(N):
            acc_iq[0, c] += adc_i[c]
            acc_iq[1, c] += adc_q[c]
            x = truth[c]
            if x == x:
                if acc_tn[c] == 0:
                    acc_t[0, c] = x
                d = x - acc_t[0, c]
                acc_t[1, c] += d
                acc_t[2, c] += d * d
                acc_tn[c] += 1
            if st.adc_overrange[c]:
                acc_over[c] = 1
    return j


@njit(cache=True)
def frame_iq(acc_iq, n, i_out, q_out):
    """Frame I/Q = mean of the n samples summed in acc_iq, rounded half away from zero
    and clipped to int16."""
    for c in range(i_out.shape[0]):
        i_out[c] = _round_i16(acc_iq[0, c] / n)
        q_out[c] = _round_i16(acc_iq[1, c] / n)


@njit(cache=True, inline="always")
def _round_i16(x):
    v = math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)
    return min(max(v, -32768.0), 32767.0)


# ----------------------------------------------------------------------------- storage

class FileFlashMedium(fi.FlashMedium):
    """A FlashMedium backed by a file: every erase/program is written through (pwrite +
    fsync) in the order the NOR would see it, so a real power cut leaves the file as a
    cut NOR would be. A missing file starts erased (all 0xFF)."""

    def __init__(self, path, size: int):
        self.path = Path(path)
        data = None
        if self.path.exists():
            data = self.path.read_bytes()
            if len(data) != size:
                raise ValueError(f"{self.path}: {len(data)} bytes, expected a {size}-byte flash")
        super().__init__(size, data)
        if data is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write_through(0, len(self.data))

    def _write_through(self, off, n):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, bytes(self.data[off:off + n]), off)
            os.fsync(fd)
        finally:
            os.close(fd)

    def erase(self, off, n):
        try:
            super().erase(off, n)
        finally:
            self._write_through(off, n)

    def program(self, off, data):
        try:
            super().program(off, data)
        finally:
            self._write_through(off, len(data))


class TruthWriter:
    """The test-only ground-truth side channel: a memory-mapped ring of frames."""

    def __init__(self, path, n_channels, frame_rate_hz, board_rate_hz, capacity=TRUTH_CAPACITY):
        self.path = Path(path)
        self.n = n_channels
        self.cap = capacity
        size = TRUTH_HEAD_LEN + capacity * 8 * (1 + 2 * n_channels)
        with open(self.path, "wb") as f:
            f.truncate(size)
        self._f = open(self.path, "r+b")
        self._mm = mmap.mmap(self._f.fileno(), size)
        self._mm[:TRUTH_HEAD_LEN] = TRUTH_HEAD.pack(TRUTH_MAGIC, TRUTH_VERSION, n_channels,
                                                    capacity, 0, frame_rate_hz, board_rate_hz)
        off = TRUTH_HEAD_LEN
        self.tick = np.frombuffer(self._mm, np.int64, capacity, off)
        off += 8 * capacity
        self.mean = np.frombuffer(self._mm, np.float64, capacity * n_channels, off).reshape(capacity, n_channels)
        off += 8 * capacity * n_channels
        self.msq = np.frombuffer(self._mm, np.float64, capacity * n_channels, off).reshape(capacity, n_channels)
        self.tick[:] = -1

    def write(self, tick64, mean, msq):
        if self._mm is None:
            return
        k = (tick64 & 0xFFFFFFFF) % self.cap
        self.tick[k] = -1                      # invalid while being rewritten
        self.mean[k] = mean
        self.msq[k] = msq
        self.tick[k] = tick64                  # commit

    def close(self):
        if self._mm is None:
            return
        mm, self._mm = self._mm, None
        del self.tick, self.mean, self.msq
        try:
            mm.close()
        except BufferError:              # a view still alive somewhere: the OS frees it at exit
            pass
        self._f.close()


# ----------------------------------------------------------------------------- options

def default_rates(profile: LinkProfile, n_channels: int, frame_rate_hz=None, board_rate_hz=None):
    """(frame_rate_hz, board_rate_hz, stream_divider) for a link and channel count.

    Frame rate: the largest of link.NICE_RATES_HZ whose DAC frame (the bigger one)
    fits 85 % of the link, at most 10 kHz (the Python host's budget); the unpaced
    'pty' profile runs 1 kHz. Board rate: frame rate x D, D the largest divider
    <= 100 kHz / frame rate keeping the rig within RIG_BUDGET of a core.
    """
    dac = wire.wire_len_max(wire.dac_payload_len(n_channels))
    if frame_rate_hz is None:
        frame_rate_hz = 1000 if profile.byte_time_s == 0 else frame_rate_for(profile, dac)
    fr = float(frame_rate_hz)
    if not fr > 0:
        raise ValueError(f"frame rate {frame_rate_hz} must be > 0")
    if board_rate_hz is None:
        max_rate = RIG_BUDGET / (RIG_TICK_S + n_channels * RIG_CHANNEL_TICK_S)
        d = max(1, min(int(100e3 // fr), int(max_rate // fr)))
    else:
        d = board_rate_hz / fr
        if abs(d - round(d)) > 1e-9 or round(d) < 1:
            raise ValueError(f"board rate {board_rate_hz} Hz must be a whole multiple of the "
                             f"frame rate {fr} Hz")
        d = int(round(d))
    if d > 1000:
        raise ValueError(f"stream divider {d} above 1000 (protocol limit)")
    return fr, fr * d, d


@dataclass
class BoardOptions:
    """What the emulated board is.

    scenario: rig scenario name or Scenario (default rack10). n_channels: default the
    scenario's.
    seed: rig seed (default 1). link: link profile name (sim_hw.link.PROFILES) or a
    LinkProfile (default uart12m). frame_rate_hz / board_rate_hz: default
    `default_rates`. latency_s: override of the link's one-way latency (s).
    keys: {key_id: 32-byte key} provisioned in the board's key store (default none:
    every authenticated command is refused AUTH_UNKNOWN_KEY). state_dir: directory
    holding the flash file and the persisted command counter (default: RAM only).
    slot_size: flash slot size, bytes (default 4096). board_serial: u64.
    truth_path: ground-truth file (test only). faults: link fault spec
    (sim_hw.link.parse_faults) or [(direction, Fault)]. blade_events: [(t_s, ch,
    "remove"|"insert", params)] (default none; hotswap=True takes the scenario's
    schedule over `hotswap_duration_s`). seed_link: seed of the fault generator.
    """
    scenario: str = "rack10"
    n_channels: int | None = None
    seed: int = 1
    link: object = "uart12m"
    frame_rate_hz: float | None = None
    board_rate_hz: float | None = None
    latency_s: float | None = None
    keys: dict = field(default_factory=dict)
    state_dir: str | None = None
    slot_size: int = fi.SLOT_SIZE_DEFAULT
    board_serial: int = 0xA770B005
    truth_path: str | None = None
    faults: object = ()
    blade_events: list = field(default_factory=list)
    hotswap: bool = False
    hotswap_duration_s: float = 3600.0
    seed_link: int = 7

    def profile(self) -> LinkProfile:
        p = self.link if isinstance(self.link, LinkProfile) else PROFILES.get(self.link)
        if p is None:
            raise ValueError(f"unknown link {self.link!r}: links are {', '.join(PROFILES)}")
        return p.replace(latency_s=self.latency_s)


# ----------------------------------------------------------------------------- the board

class PowerLost(Exception):
    """The board lost power (a simulated cut during a flash operation)."""


class Board:
    """The emulated DAC/ADC board: protocol, watchdog, flash, key store, rig.

    `send` (set by the server): callable(frame_bytes, t) that puts a wire frame on
    the link at board time t. `backlog` (set by the server): callable(t) -> seconds
    the board -> host link is still busy. Both default to a list (`sent`) and 0.
    """

    HOST_TYPES = (MsgType.HELLO, MsgType.HEARTBEAT, MsgType.STATUS, MsgType.DAC, MsgType.CONFIG,
                  MsgType.ACTUATOR_OVERRIDE, MsgType.FLASH_READ, MsgType.FLASH_WRITE, MsgType.PING)

    def __init__(self, opts: BoardOptions | None = None, medium: fi.FlashMedium | None = None,
                 counter_store=None):
        self.opts = opts = opts or BoardOptions()
        self.scenario = (get_scenario(opts.scenario) if isinstance(opts.scenario, str)
                         else opts.scenario)
        n = self.scenario.n_channels if opts.n_channels is None else int(opts.n_channels)
        self.n = n
        self.profile = opts.profile()
        self.frame_rate_hz, self.board_rate_hz, div = default_rates(
            self.profile, n, opts.frame_rate_hz, opts.board_rate_hz)
        self.rate = self.board_rate_hz
        self.rig_cfg, self.rig = build_rig(self.scenario, n, opts.seed, loop_rate_hz=self.rate)
        self.sent: list = []
        self.send = lambda frame, t: self.sent.append((t, frame))
        self.backlog = lambda t: 0.0
        # --- persistent parts: flash and key store
        size = 2 * opts.slot_size
        if medium is None:
            medium = (FileFlashMedium(Path(opts.state_dir) / "flash.bin", size) if opts.state_dir
                      else fi.FlashMedium(size))
        if counter_store is None:
            counter_store = (auth.FileCounterStore(Path(opts.state_dir) / "auth_counter")
                             if opts.state_dir else auth.MemoryCounterStore())
        self.medium = medium
        self.store = fi.TwoSlotStore(medium, opts.slot_size)
        self.verifier = auth.Verifier(dict(opts.keys), counter_store)
        # --- protocol state
        self.enc = wire.Encoder(0)
        self.dec = wire.Decoder(types=self.HOST_TYPES, on_reject=self._on_reject)
        self._dec_seen = self.dec.stats.as_dict()
        self.counters = dict.fromkeys(STATUS_COUNTERS, 0)
        self.auth_rejects = dict.fromkeys(auth.REASONS, 0)
        self.nacks: list = []                     # (t, type, reason) sent, for tests
        self.wd_log: list = [(0.0, WatchdogState.SAFE)]
        # --- settings (CONFIG fields), then the flash image's
        self.watchdog_ms = wire.WATCHDOG_MS_DEFAULT
        self.hold_ms = wire.HOLD_MS_DEFAULT
        self.ramp_ms = wire.RAMP_MS_DEFAULT
        self.status_period_ms = wire.STATUS_PERIOD_MS_DEFAULT
        self.divider = div
        self._next_divider = div
        self.safe = np.empty((3, n), np.int64)
        self.safe[0], self.safe[1], self.safe[2] = wire.PZT_MID, wire.SPOOL_MID, 0
        self.flash_report = None
        self.flash_fault = False
        self._load_flash()
        # --- outputs
        self.out = [np.full(n, wire.PZT_MID, np.int32), np.full(n, wire.SPOOL_MID, np.int32),
                    np.zeros(n, np.int32)]                     # codes latched every tick
        for k in range(3):
            self.out[k][:] = self.safe[k]
        self.stream = [a.copy() for a in self.out]             # codes the DAC stream asks for
        self.override_mask = 0
        self.override = [a.copy() for a in self.out]
        self.wd_state = WatchdogState.SAFE                       # SAFE until the first HELLO
        self.streaming = False
        self.last_rx_t = 0.0
        self._state_tick = 0                                     # tick the state was entered at
        self._ramp_from = np.zeros((3, n), np.int64)
        self._ramp_len = 0
        # --- frames
        self._t_scratch = (np.zeros(n, np.int16), np.zeros(n, np.int16), np.zeros(n))
        self._chg_tick = np.zeros(16, np.int64)
        self._chg_codes = np.zeros((16, 3, n), np.int32)
        self._n_chg = 0
        self._iq = (np.zeros(n, np.int16), np.zeros(n, np.int16))
        self._acc_iq = np.zeros((2, n))
        self._acc_t = np.zeros((3, n))
        self._acc_tn = np.zeros(n, np.int64)
        self._acc_over = np.zeros(n, np.uint8)
        self._frame_start = 0
        self._last_frame_tick = None
        self._frame_times = {}                                   # u32 tick -> board time
        self._dac_seen = False                                   # a DAC arrived this frame
        self._dac_flag = False
        self._applied_tick = None
        self._events: list = []
        self._presence = None                                    # cached presence mask
        self._event_overflow = False
        self._flags_once = 0                                     # RX_ERROR, CONFIG_CHANGED
        self._next_status_t = 0.0
        self._next_heartbeat_t = HEARTBEAT_PERIOD_S
        self._last_nack_dac = -1.0
        self.frames_sent = 0
        # --- blade schedule
        ev = list(opts.blade_events)
        if opts.hotswap:
            ev += hotswap_schedule(self.scenario, n, opts.hotswap_duration_s, opts.seed)
        self._schedule = sorted(((int(math.ceil(t * self.rate - 1e-9)), ch, kind, params)
                                 for t, ch, kind, params in ev), key=lambda e: (e[0], e[1]))
        # --- flash write in progress
        self._fw = None
        self.truth = (TruthWriter(opts.truth_path, n, self.frame_rate_hz, self.rate)
                      if opts.truth_path else None)
        self.power_lost = False
        self.late_limit_ticks = 0             # the server sets it: skip frames when behind
        self.overrun_frames = 0
        self._run(0)                          # load (or compile) the kernels now, not mid-stream
        frame_iq(self._acc_iq, 1, *self._iq)
        _warm_codec(n)

    # ------------------------------------------------------------------ flash image
    def _load_flash(self):
        reports = self.store.scan()
        self.flash_report = reports
        try:
            act = self.store.read_active()
        except fi.ImageError as e:
            self.flash_fault = e.reason != "empty"
            return
        self.flash_fault = any(r.state == "corrupt" for r in act.reports)
        cfg = act.config
        b = cfg.get("board", {})
        ms = lambda k, d: int(round(b[k] * 1000)) if k in b else d
        self.watchdog_ms = max(1, ms("watchdog_s", self.watchdog_ms))
        self.hold_ms = ms("hold_s", self.hold_ms)
        self.ramp_ms = ms("ramp_s", self.ramp_ms)
        self.status_period_ms = ms("status_period_s", self.status_period_ms)
        for ch, d in cfg.get("channels", {}).items():
            if ch < self.n:
                if "safe_pzt_frac" in d:
                    self.safe[0, ch] = min(int(round(d["safe_pzt_frac"] * (1 << wire.PZT_BITS))),
                                           (1 << wire.PZT_BITS) - 1)
                if "safe_spool_frac" in d:
                    self.safe[1, ch] = min(int(round(d["safe_spool_frac"] * (1 << wire.SPOOL_BITS))),
                                           (1 << wire.SPOOL_BITS) - 1)

    # ------------------------------------------------------------------ time
    @property
    def ticks_done(self) -> int:
        return int(self.rig.tick[0])

    def _t(self, tick) -> float:
        return tick / self.rate

    def _tick_at(self, t) -> int:
        return int(math.floor(t * self.rate + 1e-9))

    def _wd_next_tick(self):
        """Tick of the next watchdog transition, or None."""
        s = self.wd_state
        if s == WatchdogState.RUN and self.streaming:
            return max(self.ticks_done, int(math.ceil((self.last_rx_t + self.watchdog_ms / 1e3)
                                                      * self.rate - 1e-9)))
        if s == WatchdogState.HOLD:
            return self._state_tick + int(round(self.hold_ms / 1e3 * self.rate))
        if s == WatchdogState.RAMP:
            return self._state_tick + self._ramp_len
        return None

    def next_event_time(self) -> float:
        """Board time of the next thing the board does on its own."""
        ticks = [self._frame_start + self.divider]
        w = self._wd_next_tick()
        if w is not None:
            ticks.append(w)
        if self._schedule:
            ticks.append(self._schedule[0][0])
        t = self._t(min(ticks))
        if self.streaming and self.status_period_ms:
            t = min(t, self._next_status_t)
        if not self.streaming:
            t = min(t, self._next_heartbeat_t)
        return t

    # ------------------------------------------------------------------ running
    def advance(self, t: float) -> None:
        """Do everything due up to board time t: frames, watchdog transitions, blade
        events, STATUS/HEARTBEAT. The rig runs only up to the last of those (its
        ticks between need no one's attention until the next frame; code changes
        wait in the change queue with their tick)."""
        target = self._tick_at(t)
        while True:
            k = int(self.rig.tick[0])
            fe = self._frame_start + self.divider
            w = self._wd_next_tick()
            stops = [fe]
            if w is not None:
                stops.append(w)
            if self._schedule:
                stops.append(self._schedule[0][0])
            stop = min(stops) if len(stops) > 1 else fe
            if stop > target:
                break
            if self.late_limit_ticks and target - stops[0] > self.late_limit_ticks:
                self._skip_frames(target, min(stops[1:], default=target))
                continue
            if stop > k:
                self._run(stop - k)
                k = stop
            if k >= fe:
                self._end_frame()
                w = self._wd_next_tick()
            while w is not None and k >= w:
                self._flush_changes(k)
                self._wd_transition(k)
                w = self._wd_next_tick()
            while self._schedule and self._schedule[0][0] <= k:
                self._blade_event(*self._schedule.pop(0)[1:])
        now = t
        if self.streaming and self.status_period_ms:
            period = self.status_period_ms / 1e3
            if self._next_status_t < now - 2 * period:     # the emulator was held up: no burst
                self._next_status_t = now
            while self._next_status_t <= now:
                ts = self._next_status_t
                self._next_status_t = ts + period
                self._send(MsgType.STATUS, self._status(ts).pack(), ts)
        if not self.streaming:
            if self._next_heartbeat_t < now - 2 * HEARTBEAT_PERIOD_S:
                self._next_heartbeat_t = now
            while self._next_heartbeat_t <= now:
                th = self._next_heartbeat_t
                self._next_heartbeat_t = th + HEARTBEAT_PERIOD_S
                self._send(MsgType.HEARTBEAT, wire.Heartbeat(int(round(th * 1e3)) & 0xFFFFFFFF).pack(), th)

    def _skip_frames(self, target, next_stop):
        """The emulator fell behind the wall clock by more than late_limit_ticks: run the
        rig through the backlog in one call and send none of its frames (counted in
        overrun_frames; no sequence number is used, so the host sees a jump of the
        tick, not a loss). A hardware board never does this."""
        limit = min(target - self.late_limit_ticks // 2, next_stop)
        nf = (limit - self._frame_start) // self.divider
        if nf < 1:
            nf = 1
        end = self._frame_start + nf * self.divider
        if end > self.ticks_done:
            self._run(end - self.ticks_done)
        self.overrun_frames += nf
        self._acc_iq[:] = 0
        self._acc_t[:] = 0
        self._acc_tn[:] = 0
        self._acc_over[:] = 0
        self._frame_start = end
        self._dac_seen = True                   # no dac_missing for frames never sent

    def _run(self, n):
        ri, rq, rt = self._t_scratch
        ramp = self.wd_state == WatchdogState.RAMP and self._ramp_len > 0
        pos = self.ticks_done - self._state_tick if ramp else 0
        used = advance_kernel(self.rig_cfg, self.rig, n, self.out[0], self.out[1], self.out[2],
                              self._chg_tick, self._chg_codes, self._n_chg,
                              self._ramp_from, self.safe, pos, self._ramp_len if ramp else 0,
                              ri, rq, rt, self._acc_iq, self._acc_t, self._acc_tn, self._acc_over)
        self._drop_changes(used)

    def _drop_changes(self, used):
        if used:
            m = self._n_chg - used
            self._chg_tick[:m] = self._chg_tick[used:self._n_chg]
            self._chg_codes[:m] = self._chg_codes[used:self._n_chg]
            self._n_chg = m

    def _flush_changes(self, k):
        """Apply queued code changes due at or before tick k to `out` (at a stop)."""
        j = 0
        while j < self._n_chg and self._chg_tick[j] <= k:
            for a in range(3):
                self.out[a][:] = self._chg_codes[j, a]
            j += 1
        self._drop_changes(j)

    def _queue_codes(self, t):
        """The stream codes with the overrides on top, latched from the tick after t."""
        c = self._tick_at(t)
        n = self._n_chg
        if n and self._chg_tick[n - 1] == c:
            j = n - 1
        else:
            if n == self._chg_tick.shape[0]:
                self._run(max(0, c - self.ticks_done))     # full: run the rig up to now
                n = self._n_chg
            j = n
            self._n_chg = n + 1
        self._chg_tick[j] = c
        m = self.override_mask
        for a in range(3):
            self._chg_codes[j, a] = self.stream[a]
            if m:
                sel = np.array([(m >> ch) & 1 for ch in range(self.n)], bool)
                self._chg_codes[j, a][sel] = self.override[a][sel]

    def _end_frame(self):
        k = self.ticks_done
        n = k - self._frame_start
        t = self._t(k)
        tick = (k - 1) & 0xFFFFFFFF
        if self.streaming:
            flags = self._board_flags()
            if self._last_frame_tick is not None and self.wd_state == WatchdogState.RUN \
                    and not self._dac_seen:
                self.counters["dac_missing"] += 1
                flags |= _F["DAC_LATE"]
            if self._dac_flag:
                flags |= _F["DAC_LATE"]
            if self.truth is not None:
                tn = np.maximum(self._acc_tn, 1)
                mean_d = self._acc_t[1] / tn
                mean = np.where(self._acc_tn > 0, self._acc_t[0] + mean_d, np.nan)
                msq = np.where(self._acc_tn > 0, np.maximum(self._acc_t[2] / tn - mean_d ** 2, 0.0), np.nan)
                self.truth.write(k - 1, mean, msq)
            if self.backlog(t) > 2.0 * self.divider / self.rate:
                self.counters["tx_dropped"] += 1          # dropped before encoding: no seq used
            else:
                i, q = self._iq
                frame_iq(self._acc_iq, n, i, q)
                over = _mask(self._acc_over)
                if self._presence is None:
                    self._presence = _mask(self.rig.present)
                pres = self._presence
                ev = tuple(self._events[:wire.MAX_EVENTS])
                del self._events[:wire.MAX_EVENTS]
                if self._event_overflow:
                    flags |= _F["EVENT_OVERFLOW"]
                    self._event_overflow = False
                frame = self.enc.adc(tick, i, q, board_flags=flags, overrange=over,
                                     presence=pres, events=ev)
                self.counters["tx_frames"] += 1
                self.frames_sent += 1
                self.send(frame, t)
            self._frame_times[tick] = t
            if len(self._frame_times) > TICK_RING:
                for old in list(self._frame_times)[:TICK_RING // 2]:
                    del self._frame_times[old]
            self._last_frame_tick = tick
            self._dac_seen = False
            self._dac_flag = False
            self._flags_once = 0
        self._acc_iq[:] = 0
        self._acc_t[:] = 0
        self._acc_tn[:] = 0
        self._acc_over[:] = 0
        self._frame_start = k
        self.divider = self._next_divider

    def _board_flags(self) -> int:
        f = int(self._flags_once)
        s = self.wd_state
        if s == WatchdogState.HOLD:
            f |= _F["WATCHDOG_HOLD"]
        elif s == WatchdogState.RAMP:
            f |= _F["WATCHDOG_RAMP"]
        elif s == WatchdogState.SAFE:
            f |= _F["SAFE"]
        if self.override_mask:
            f |= _F["OVERRIDE"]
        if self._fw is not None:
            f |= _F["FLASH_BUSY"]
        if self.flash_fault:
            f |= _F["FLASH_FAULT"]
        return f

    def _set_state(self, s, k):
        self.wd_state = s
        self._state_tick = k
        self.wd_log.append((self._t(k), s))

    def _wd_transition(self, k):
        s = self.wd_state
        if s == WatchdogState.RUN:
            self.counters["watchdog_trips"] += 1
            self._set_state(WatchdogState.HOLD, k)          # outputs keep their codes
            self._fw = None                                 # a HOLD aborts a flash write
        elif s == WatchdogState.HOLD:
            self.override_mask = 0                          # overrides released
            for j in range(3):
                self.stream[j][:] = self.out[j]
            self._ramp_from[:] = np.array(self.out, np.int64)
            self._ramp_len = max(0, int(round(self.ramp_ms / 1e3 * self.rate)))
            self._set_state(WatchdogState.RAMP, k)
            if self._ramp_len == 0:
                self._enter_safe(k)
        elif s == WatchdogState.RAMP:
            self._enter_safe(k)

    def _enter_safe(self, k):
        for j in range(3):
            self.out[j][:] = self.safe[j]
        self._set_state(WatchdogState.SAFE, k)

    def schedule_blade_event(self, t_s: float, ch: int, kind: str, params: dict | None = None):
        """Remove ("remove") or insert ("insert", params = sim_hw.scenarios.draw_blade
        keywords) the blade of channel ch at board time t_s (applied at the first tick
        at or after it; safe to call from another thread while the server runs)."""
        if kind not in ("remove", "insert") or not 0 <= ch < self.n:
            raise ValueError(f"blade event {kind!r} on channel {ch}: remove or insert, ch 0..{self.n - 1}")
        ev = (int(math.ceil(t_s * self.rate - 1e-9)), ch, kind, dict(params or {}))
        self._schedule = sorted(self._schedule + [ev], key=lambda e: (e[0], e[1]))

    def _blade_event(self, ch, kind, params):
        self._presence = None
        if kind == "remove":
            serial = int(self.rig.blade_serial[ch])
            remove_blade(self.rig, ch)
            ev = wire.BladeEventKind.REMOVED
        elif kind == "insert":
            insert_blade(self.rig_cfg, self.rig, ch, **params)
            serial = int(self.rig.blade_serial[ch])
            ev = wire.BladeEventKind.INSERTED
        else:
            raise ValueError(f"blade event kind {kind!r}: remove or insert")
        if len(self._events) >= 4 * wire.MAX_EVENTS:
            self._event_overflow = True
        else:
            self._events.append(wire.BladeEvent(ch, ev, serial))

    # ------------------------------------------------------------------ receiving
    _RX = (("crc_errors", "rx_crc_errors"), ("cobs_errors", "rx_cobs_errors"),
           ("oversize", "rx_oversize"), ("malformed", "rx_malformed"), ("lost", "rx_lost"),
           ("frames_ok", "rx_ok"))

    def receive(self, data: bytes, t: float) -> None:
        """Bytes delivered by the link at board time t."""
        self.advance(t)
        self._now = t
        frames = self.dec.feed(data)
        st = self.dec.stats
        seen = self._dec_seen
        bad = 0
        for k, name in self._RX:
            v = getattr(st, k)
            d = v - seen[k]
            if d:
                seen[k] = v
                self.counters[name] += d
                if k not in ("lost", "frames_ok"):
                    bad += d
        if bad:
            self._flags_once |= BoardFlags.RX_ERROR
        for f in frames:
            self._frame(f, t)

    def _on_reject(self, t, seq, reason, detail):
        now = getattr(self, "_now", 0.0)
        if reason == "bad_version":
            self._nack(t, seq, NackReason.BAD_VERSION, wire.PROTOCOL_VERSION, now)
        elif reason == "unknown_type":
            self._nack(t, seq, NackReason.UNKNOWN_TYPE, t & 0xFF, now)
        elif t in wire.AUTHENTICATED and "truncated" in str(detail):
            self.auth_rejects["truncated"] += 1
            self.counters["auth_rejects"] += 1
            self._nack(t, seq, NackReason.AUTH_TRUNCATED, 0, now)
        elif t == MsgType.DAC and now - self._last_nack_dac < NACK_DAC_PERIOD_S:
            pass
        else:
            if t == MsgType.DAC:
                self._last_nack_dac = now
            self._nack(t, seq, NackReason.MALFORMED, 0, now)

    def _send(self, msg_type, payload, t):
        self.counters["tx_frames"] += 1
        self.send(self.enc.frame(msg_type, payload), t)

    def _nack(self, ref_type, ref_seq, reason, detail, t):
        self.nacks.append((t, int(ref_type), NackReason(reason).name))
        self._send(MsgType.NACK, wire.Nack(ref_type & 0xFF, ref_seq, int(reason),
                                           int(detail) & 0xFFFFFFFF).pack(), t)

    def _ack(self, f, detail, t):
        self._send(MsgType.ACK, wire.Ack(f.type, f.seq, int(detail) & 0xFFFFFFFF).pack(), t)

    def _frame(self, f, t):
        self.last_rx_t = t
        k = self._tick_at(t)
        if self.wd_state == WatchdogState.HOLD:
            self._set_state(WatchdogState.RUN, k)           # nothing has moved
        typ = f.type
        if typ == MsgType.DAC:
            self._dac(f, t)
        elif typ == MsgType.HELLO:
            self._hello(f, t)
        elif typ == MsgType.PING:
            t_frame = self._frame_times.get(f.msg.ref_tick)
            us = (wire.AGE_UNKNOWN if t_frame is None
                  else min(int(round((t - t_frame) * 1e6)), wire.AGE_UNKNOWN - 1))
            self._send(MsgType.PONG, wire.Pong(f.msg.token, f.msg.ref_tick, k, us).pack(), t)
        elif typ == MsgType.STATUS:
            self._send(MsgType.STATUS, self._status(t).pack(), t)
        elif typ == MsgType.FLASH_READ:
            self._flash_read(f, t)
        elif typ in wire.AUTHENTICATED:
            self._command(f, t)
        # HEARTBEAT: fed the watchdog, nothing else

    def _hello(self, f, t):
        if f.msg.proto_version != wire.PROTOCOL_VERSION:
            self._nack(f.type, f.seq, NackReason.BAD_VERSION, wire.PROTOCOL_VERSION, t)
            return
        self._fw = None                                        # HELLO aborts a flash write
        k = self._tick_at(t)
        if self.wd_state in (WatchdogState.RAMP, WatchdogState.SAFE):
            if self.wd_state == WatchdogState.RAMP:            # stop the ramp where it is
                self._run(max(0, k - self.ticks_done))
            for j in range(3):                                 # outputs stay where they are
                self.stream[j][:] = self.out[j]
        if self.wd_state != WatchdogState.RUN:
            self._set_state(WatchdogState.RUN, k)
        if not self.streaming:
            self.streaming = True
            self._next_status_t = t + self.status_period_ms / 1e3
        self._applied_tick = None
        self._last_frame_tick = None
        caps = wire.Caps(n_channels=self.n, loop_rate_hz=int(round(self.rate)),
                         board_serial=self.opts.board_serial & ((1 << 64) - 1),
                         fw_version=FW_VERSION, nonce=f.msg.nonce,
                         auth_counter=self.verifier.last_counter, key_ids=self.verifier.key_mask,
                         tick=k, watchdog_ms=self.watchdog_ms, hold_ms=self.hold_ms,
                         ramp_ms=self.ramp_ms)
        self._send(MsgType.CAPS, caps.pack(), t)

    def _dac(self, f, t):
        m = f.msg
        if self.wd_state in (WatchdogState.RAMP, WatchdogState.SAFE) or m.pzt.shape[0] != self.n:
            if t - self._last_nack_dac >= NACK_DAC_PERIOD_S:
                self._last_nack_dac = t
                if m.pzt.shape[0] != self.n:
                    self._nack(f.type, f.seq, NackReason.CHANNELS, self.n, t)
                else:
                    self._nack(f.type, f.seq, NackReason.NOT_ARMED, 0, t)
            return
        if self._applied_tick is not None and ((m.tick - self._applied_tick) & 0xFFFFFFFF) >= 1 << 31:
            self.counters["dac_late"] += 1                   # older than the one applied: dropped
            self._dac_flag = True
            return
        if self._last_frame_tick is not None and m.tick != self._last_frame_tick:
            self.counters["dac_late"] += 1
            self._dac_flag = True
        else:
            self._dac_seen = True
        self._applied_tick = m.tick
        hold = m.hold
        if hold == 0:
            self.stream[0][:] = m.pzt
            self.stream[1][:] = m.spool
            self.stream[2][:] = m.dds
        else:
            keep = np.array([(hold >> c) & 1 for c in range(self.n)], bool)
            for j, a in enumerate((m.pzt, m.spool, m.dds)):
                self.stream[j][~keep] = a[~keep]
        self._queue_codes(t)

    # ------------------------------------------------------------------ commands
    def _command(self, f, t):
        sig = f.msg
        try:
            v = self.verifier.verify(f.type, sig.payload)
        except auth.AuthError as e:
            self.auth_rejects[e.reason] += 1
            self.counters["auth_rejects"] += 1
            detail = {"unknown_key": sig.key_id,
                      "replay": self.verifier.last_counter & 0xFFFFFFFF}.get(e.reason, 0)
            self._nack(f.type, f.seq, wire.AUTH_NACK[e.reason], detail, t)
            return
        try:
            body = wire.unpack_body(f.type, v.body)
        except (wire.WireFormatError, ValueError, struct.error) as e:
            text = str(e)
            if "out of range" in text and f.type == MsgType.CONFIG:
                idx = next((i for i, k in enumerate(wire.Config.RANGES) if k + "=" in text), 0)
                self._nack(f.type, f.seq, NackReason.RANGE, idx, t)
            else:
                self._nack(f.type, f.seq, NackReason.MALFORMED, 0, t)
            return
        if f.type == MsgType.CONFIG:
            self._config(f, body, t)
        elif f.type == MsgType.ACTUATOR_OVERRIDE:
            self._override(f, body, t)
        else:
            self._flash_write(f, body, t)

    def _config(self, f, c, t):
        n = c.safe_pzt.shape[0]
        if n not in (0, self.n):
            self._nack(f.type, f.seq, NackReason.CHANNELS, self.n, t)
            return
        self.watchdog_ms, self.hold_ms, self.ramp_ms = c.watchdog_ms, c.hold_ms, c.ramp_ms
        self.status_period_ms = c.status_period_ms
        self._next_divider = c.stream_divider
        if n:
            self.safe[0], self.safe[1], self.safe[2] = c.safe_pzt, c.safe_spool, c.safe_dds
        self._flags_once |= BoardFlags.CONFIG_CHANGED
        self._ack(f, 0, t)

    def _override(self, f, o, t):
        if o.mode == OverrideMode.FORCE:
            if self.wd_state in (WatchdogState.RAMP, WatchdogState.SAFE):
                self._nack(f.type, f.seq, NackReason.NOT_ARMED, 0, t)
                return
            if o.pzt.shape[0] != self.n:
                self._nack(f.type, f.seq, NackReason.CHANNELS, self.n, t)
                return
            sel = np.array([(o.mask >> c) & 1 for c in range(self.n)], bool)
            for j, a in enumerate((o.pzt, o.spool, o.dds)):
                self.override[j][sel] = a[sel]
            self.override_mask |= o.mask
        else:
            self.override_mask &= ~o.mask & ((1 << self.n) - 1)
        if self.wd_state in (WatchdogState.RUN, WatchdogState.HOLD):
            self._queue_codes(t)
        self._ack(f, 0, t)

    # ------------------------------------------------------------------ flash
    def _flash_read(self, f, t):
        r = f.msg
        if r.slot == wire.FLASH_SLOT_ACTIVE:
            try:
                slot = self.store.read_active().slot
            except fi.ImageError:
                self._nack(f.type, f.seq, NackReason.FLASH_SLOT, 0, t)
                return
        elif r.slot in (0, 1):
            slot = r.slot
        else:
            self._nack(f.type, f.seq, NackReason.RANGE, 0, t)
            return
        if r.offset + r.length > self.store.slot_size:
            self._nack(f.type, f.seq, NackReason.RANGE, 1, t)
            return
        data = self.medium.read(self.store.slot_offset(slot) + r.offset, r.length)
        self._send(MsgType.FLASH_DATA, wire.FlashData(slot, r.offset, data).pack(), t)

    def _flash_write(self, f, w, t):
        """docs/protocol.md 13.4. A PowerCut from the medium propagates (PowerLost)."""
        size = self.store.slot_size
        try:
            if w.offset == 0:
                if w.total_len > size or w.total_len < fi.HEADER_LEN:
                    self._fw = None
                    self._nack(f.type, f.seq, NackReason.TOO_LARGE, size, t)
                    return
                found = self.store.scan()
                valid = [r for r in found if r.state == "valid"]
                if valid:
                    newest = max(valid, key=lambda r: r.seq)
                    target, newest_seq = 1 - newest.slot, newest.seq
                else:
                    target = next((r.slot for r in found if r.state == "empty"), 0)
                    newest_seq = 0
                self._fw = {"slot": target, "total": w.total_len, "next": 0,
                            "head": bytearray(fi.HEADER_LEN), "newest_seq": newest_seq}
                self.medium.erase(self.store.slot_offset(target), size)
            fw = self._fw
            if fw is None or w.offset != fw["next"] or w.total_len != fw["total"]:
                expect = 0 if fw is None else fw["next"]
                self._nack(f.type, f.seq, NackReason.FLASH_OFFSET, expect, t)
                return
            base = self.store.slot_offset(fw["slot"])
            data = w.data
            pos = w.offset
            if pos < fi.HEADER_LEN:                          # the header stays in RAM
                k = min(len(data), fi.HEADER_LEN - pos)
                fw["head"][pos:pos + k] = data[:k]
                data, pos = data[k:], pos + k
            if data:
                self.medium.program(base + pos, data)
            fw["next"] = w.offset + len(w.data)
            if fw["next"] < fw["total"]:
                self._ack(f, fw["next"], t)
                return
            self._fw = None
            image = bytes(fw["head"]) + self.medium.read(base + fi.HEADER_LEN,
                                                          fw["total"] - fi.HEADER_LEN)
            try:
                cfg = fi.parse_image(image)
                if cfg["seq"] <= fw["newest_seq"]:
                    raise fi.ImageError("stale_seq", f"seq {cfg['seq']} <= {fw['newest_seq']}")
            except fi.ImageError as e:
                self.flash_write_error = e
                self._nack(f.type, f.seq, NackReason.FLASH_VERIFY, 0, t)
                return
            self.medium.program(base + 4, image[4:fi.HEADER_LEN])     # header fields
            self.medium.program(base, image[:4])                      # magic last: the commit
            if self.medium.read(base, len(image)) != image:
                self._nack(f.type, f.seq, NackReason.FLASH_VERIFY, 1, t)
                return
            self.flash_report = self.store.scan()
            self.flash_fault = any(r.state == "corrupt" for r in self.flash_report)
            self._ack(f, fw["total"], t)
        except fi.PowerCut as e:
            self.power_lost = True
            raise PowerLost(str(e)) from e

    # ------------------------------------------------------------------ status
    def _status(self, t) -> wire.Status:
        return wire.Status(tick=self._tick_at(t), watchdog_state=int(self.wd_state),
                           board_flags=self._board_flags(), counters=dict(self.counters),
                           presence=_mask(self.rig.present),
                           serials=tuple(int(s) if p else 0 for s, p in
                                         zip(self.rig.blade_serial, self.rig.present)))

    def close(self):
        if self.truth is not None:
            self.truth.close()


def _warm_codec(n):
    """Run the codec's jitted paths once (ADC/DAC encode, unframe, u24 unpack)."""
    z = np.zeros(n, np.int32)
    e = wire.Encoder()
    wire.Decoder().feed(e.adc(0, z, z) + e.dac(0, z, z, z))


def _mask(a) -> int:
    """u64 channel mask of the nonzero entries of a (N <= 64)."""
    if not a.any():
        return 0
    return int.from_bytes(np.packbits(a != 0, bitorder="little").tobytes(), "little")


# ----------------------------------------------------------------------------- server

class BoardServer:
    """The board on a pseudo-terminal or a TCP socket, behind an emulated link, on the
    wall clock. `open_pty()` -> slave path; `listen(host, port)` -> (host, port);
    `serve(duration_s)` runs in the calling thread; `start()`/`stop()` in a thread.
    Link faults: `up` (board -> host) and `down` (host -> board) LinkDirections."""

    def __init__(self, board: Board, clock=time.perf_counter):
        self.board = board
        prof = board.profile
        self.up = LinkDirection(prof, board.opts.seed_link, "up")
        self.down = LinkDirection(prof, board.opts.seed_link, "down")
        faults = board.opts.faults
        for direction, fault in (parse_faults(faults) if isinstance(faults, str) else faults):
            for d in ((self.up, self.down) if direction == "both" else
                      (self.up,) if direction == "up" else (self.down,)):
                d.add_fault(fault)
        board.send = self.up.submit
        board.backlog = self.up.backlog_s
        board.late_limit_ticks = int(round(LATE_LIMIT_S * board.rate))
        self.clock = clock
        self._t0 = None
        self._fd = None
        self._slave = None
        self._lsock = None
        self._conn = None
        self._out = bytearray()
        self._stop = threading.Event()
        self._thread = None
        self.error = None
        self.port_dropped = 0             # frames lost at the port (no host, or not reading)
        self.overruns = 0                 # wake-ups more than 1 ms after their due time
        self.max_overrun_s = 0.0
        self.path = None
        self.address = None

    def now(self) -> float:
        return self.clock() - self._t0

    def open_pty(self) -> str:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._fd, self._slave = master, slave          # the slave stays open: no EIO between hosts
        self.path = os.ttyname(slave)
        return self.path

    def listen(self, host: str = "127.0.0.1", port: int = 0):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(1)
        s.setblocking(False)
        self._lsock = s
        self.address = s.getsockname()
        return self.address

    def start(self):
        self._thread = threading.Thread(target=self._serve_safe, name="attobus-board", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=5.0):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.close()

    def _serve_safe(self):
        try:
            self.serve()
        except PowerLost as e:
            self.error = e
            self.close()
        except BaseException as e:      # pragma: no cover - reported to the test
            self.error = e
            self.close()

    def _io_fd(self):
        if self._fd is not None:
            return self._fd
        return None if self._conn is None else self._conn.fileno()

    def serve(self, duration_s: float | None = None) -> None:
        """Run until stop() or duration_s of board time."""
        b = self.board
        gc.collect()
        gc.freeze()            # numba's objects out of the collector's way: no 50 ms pauses
        if self._t0 is None:
            self._t0 = self.clock()
        while not self._stop.is_set():
            now = self.now()
            if duration_s is not None and now >= duration_s:
                break
            due = [b.next_event_time(), now + 0.02]
            for d in (self.up, self.down):
                x = d.next_due()
                if x is not None:
                    due.append(x)
            timeout = max(0.0, min(due) - now)
            fd = self._io_fd()
            rl = [fd] if fd is not None else []
            if self._lsock is not None:
                rl.append(self._lsock)
            wl = [fd] if (fd is not None and self._out) else []
            r, w, _ = select.select(rl, wl, [], timeout) if (rl or wl) else ([], [], time.sleep(timeout))
            now = self.now()
            late = now - min(due) - 1e-3
            if late > 0:                                   # woke (or got the CPU) late
                self.overruns += 1
                self.max_overrun_s = max(self.max_overrun_s, late)
            if self._lsock is not None and self._lsock in r:
                self._accept()
            if fd is not None and fd in r:
                data = self._read(fd)
                if data:
                    self.down.submit_bytes(data, now)
            for at, data in self.down.pop_due(now):
                b.receive(data, at)
            b.advance(now)
            fd = self._io_fd()
            for at, data in self.up.pop_due(now):
                if fd is None or len(self._out) + len(data) > PORT_BUFFER:
                    # nobody listening, or the host stopped reading and the port's buffer
                    # is full: the new frame is lost whole (counted; never half a frame)
                    self.port_dropped += data.count(0)
                else:
                    self._out += data
            if fd is not None and self._out:
                self._write(fd)

    def _accept(self):
        try:
            conn, _ = self._lsock.accept()
        except BlockingIOError:
            return
        if self._conn is not None:                         # one host at a time
            self._conn.close()
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conn = conn
        self.port_dropped += self._out.count(0)
        self._out.clear()

    def _read(self, fd) -> bytes:
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:
            data = b""
        if not data and self._conn is not None:           # the host closed the socket
            self._conn.close()
            self._conn = None
        return data

    def _write(self, fd):
        try:
            k = os.write(fd, self._out)
            del self._out[:k]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self.port_dropped += self._out.count(0)
            self._out.clear()

    def close(self):
        for fd in (self._fd, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._slave = None
        for s in (self._conn, self._lsock):
            if s is not None:
                s.close()
        self._conn = self._lsock = None
        self.board.close()
