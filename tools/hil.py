"""Closing the loop over a serial link: `attobus run --hal serial://PORT`.

The host loop here drives the bank (firmware.bank) through the serial
backend (hal.serial_backend) at the rate the link carries, not at the
scenario's 100 kHz:

1. open the port, handshake, learn the frame rate R (board rate / stream
   divider: the board decimates its front end and holds the DAC codes
   between frames, sim_hw/board.py);
2. stream for `MEASURE_S` with every channel on hold, PINGing every frame,
   to measure the loop delay tau: from the end of an ADC frame to the
   arrival of the DAC frame answering it, on the board's clock (80th
   percentile), plus the DAC's own latch (one board tick, and half a tick
   of arrival phase);
3. design the servo for (R, tau) (`design_servo`): the rack family K (1 +
   w_z/s)^n [x low-pass] on the discrete plant of tools.loop_design with a
   fractional delay, chosen on a grid for the least predicted residual of
   the scenario's disturbance with phase margin >= 45 deg, gain margin >=
   6 dB, sensitivity peak < 6 dB, and checked on its closed-loop poles
   (`analyse`); designs are cached per (R, tau rounded to 0.05 frame);
4. run the bank frame by frame. The loop keeps PINGing (every 16th frame);
   when the loop delay (last 64 samples) moves by more than half a frame
   from the design it re-designs on a worker thread and swaps the bank's
   config between two frames (bumpless). Designs run on a worker thread
   while the link is kept alive (hold frames), so the board's watchdog
   never sees a silent host.

Comm loss: when no ADC frame arrives within the backend's comm timeout
(10 frame periods, at least 20 ms), the loop raises COMM_TIMEOUT (live and
sticky) on every channel, ticks the bank through `Bank.step_missing` once
per frame period missed (its holdover: actuators held, turn count kept,
relock confirmed when frames return; without that method the bank is
simply not ticked), and sends hold frames (every channel's hold bit set),
which keep the board's outputs at their last codes and its watchdog fed.
The first frame after the outage clears the live bit and the loop resumes.

Residuals are out of loop: the emulator's ground-truth side channel gives,
per frame, the mean of the true one-way delay over the frame and the mean
square about it; the residual is the band-limited RMS (1 Hz - R/2) of the
frame means over the longest LOCKED stretch, combined in quadrature with
the mean intra-frame variance (motion faster than the loop can see).
"""
from __future__ import annotations

import dataclasses
import functools
import gc
import inspect
import math
import threading
import time

import numpy as np

from firmware.bank import Bank, PZT_MID
from firmware.units import ONEWAY_S_PER_TURN
from firmware.calibration import CAL_STATUS_NAMES
from firmware.faults import COMM_TIMEOUT, LOCKED, STATE_NAMES, flag_names
from firmware.servo_build import LowpassSettings, ServoSettings, ZeroIntegratorSettings
from hal.frames import OutFrame
from hal.backend import BackendError
from hal.serial_backend import CommTimeout, SerialBackend
from tools import analysis
from tools.loop_design import PzPlant, analyse, controller_tf
from tools.runner import ChannelResult, Recorder, RunResult, locked_segment

MEASURE_S = 0.25
PING_EVERY = 16
REDESIGN_FRAMES = 0.5           # re-design when the loop delay moves by this many frames
MAX_DELAY_FRAMES = 40.0         # longest loop delay designed for (longer: clamped, reported)
SETTLE_S = 0.05


# ----------------------------------------------------------------------------- plant and design

class LinkPlant:
    """PzPlant with a fractional loop delay: the code answering ADC frame n is applied
    delay_frames frame periods after the end of that frame (PzPlant's latch_ticks = m
    is delay m; delay m + phi mixes the two neighbours, (1 - phi) z^-m + phi z^-(m+1),
    which is exact for a zero-order hold read by an integrate-and-dump front end)."""

    def __init__(self, rate_hz, delay_frames, resonance_hz=30e3, q=10.0):
        if not (delay_frames >= 0 and math.isfinite(delay_frames)):
            raise ValueError(f"loop delay {delay_frames} frames must be finite and >= 0")
        self.rate_hz = float(rate_hz)
        self.delay_frames = float(delay_frames)
        self.m = int(math.floor(delay_frames))
        self.phi = delay_frames - self.m
        self._base = PzPlant(rate_hz=rate_hz, resonance_hz=resonance_hz, q=q, latch_ticks=self.m)

    def tf(self):
        num, den = self._base.tf()
        num = np.polymul(num, [1.0 - self.phi, self.phi])
        return np.trim_zeros(num, "f"), np.concatenate([den, [0.0]])

    def response(self, f_hz):
        num, den = self.tf()
        z = np.exp(2j * np.pi * np.asarray(f_hz) / self.rate_hz)
        return np.polyval(num, z) / np.polyval(den, z)


def _servo(params, rate):
    gain, corner, order, lp = params
    secs = [ZeroIntegratorSettings(gain=gain, corner_hz=corner, order=order)]
    if lp:
        secs.append(LowpassSettings(f_hz=lp, q=0.7))
    return ServoSettings(sections=tuple(secs), loop_rate_hz=rate)


def _candidates(rate):
    for order in (1, 2):
        for gain in np.geomspace(0.08, 0.8, 10):
            for corner_frac in np.geomspace(0.004, 0.3, 14):
                for lp_frac in (None, 0.15, 0.3):
                    corner = corner_frac * rate
                    if order == 2 and corner_frac > 0.1:
                        continue
                    yield (float(gain), float(corner), order, None if lp_frac is None else lp_frac * rate)


def _fast_metrics(Lc, f, psd, rate):
    """(pm_deg, gm_db, s_peak_db, residual_as) of open-loop responses Lc[k, f] on grid f."""
    S = 1.0 / (1.0 + Lc)
    speak = 20 * np.log10(np.abs(S).max(axis=1))
    res = np.sqrt(np.trapezoid(np.abs(S) ** 2 * psd, f, axis=1)) / 1e-18
    mag = np.abs(Lc)
    pm = np.full(Lc.shape[0], 180.0)
    gm = np.full(Lc.shape[0], np.inf)
    for k in range(Lc.shape[0]):
        cross = np.nonzero(np.diff(np.sign(mag[k] - 1.0)))[0]
        if cross.size:
            p = 180.0 + np.degrees(np.angle(Lc[k, cross]))
            pm[k] = (((p + 180) % 360) - 180).min()
        ph = np.unwrap(np.angle(Lc[k]))
        j = np.nonzero(np.diff(np.floor((ph + np.pi) / (2 * np.pi))))[0]
        if j.size:
            gm[k] = np.abs(20 * np.log10(mag[k, j])).min()
    return pm, gm, speak, res


@functools.lru_cache(maxsize=64)
def _design_cached(rate_hz, delay_key, scen, length_m):
    delay = delay_key / 20.0
    plant = LinkPlant(rate_hz, delay, scen.pzt_resonance_hz, scen.pzt_q)
    psd_fn = lambda f: scen.fibre_psd_s2_per_hz(f, length_m)
    f = np.geomspace(1.0, 0.4999 * rate_hz, 400)
    P = plant.response(f)
    z = np.exp(2j * np.pi * f / rate_hz)
    psd = psd_fn(f)
    cands = list(_candidates(rate_hz))
    C = np.empty((len(cands), f.size), complex)
    for k, c in enumerate(cands):
        b, a = controller_tf(_servo(c, rate_hz))
        C[k] = np.polyval(b, z) / np.polyval(a, z)
    pm, gm, speak, res = _fast_metrics(C * P, f, psd, rate_hz)
    ok = (pm >= 45.0) & (gm >= 6.0) & (speak < 6.0)
    order = np.argsort(np.where(ok, res, np.inf))
    for k in order[:12]:
        if not ok[k]:
            break
        servo = _servo(cands[k], rate_hz)
        try:
            rep = analyse(servo, plant, psd_fn, quantised=True, n_freq=2000)
        except ValueError:
            continue
        if (rep.max_pole < 0.9995 and rep.phase_margin_deg >= 45.0 and rep.gain_margin_db >= 6.0
                and rep.sensitivity_peak_db < 6.0):
            return servo, rep
    raise ValueError(f"no servo of the rack family meets PM >= 45 deg, GM >= 6 dB and a "
                     f"sensitivity peak < 6 dB at {rate_hz:g} Hz with a {delay:.2f}-frame delay")


def design_servo(rate_hz: float, delay_frames: float, scenario, length_m: float | None = None):
    """(ServoSettings, LoopReport) for a loop at rate_hz with the code answering a frame
    applied delay_frames frame periods after its end. scenario: Scenario or name (its
    disturbance PSD at length_m, default its longest link, is what is minimised)."""
    from sim_hw.scenarios import get_scenario
    scen = get_scenario(scenario) if isinstance(scenario, str) else scenario
    length = scen.link_length_max_m if length_m is None else float(length_m)
    key = int(round(max(0.0, delay_frames) * 20))
    return _design_cached(float(rate_hz), key, scen, length)


def frame_step_rms_s(scenario, rate_hz, length_m=None) -> float:
    """RMS change of the frame-averaged free-running one-way delay from one frame to
    the next (s), longest link by default: sqrt(int S(f) 4 sin^2(pi f/R) sinc^2(f/R) df).
    Against a quarter turn (1.29 fs / 2, the slip detector) it says whether a loop at R
    can follow the link at all (docs/hil.md)."""
    L = scenario.link_length_max_m if length_m is None else length_m
    f = np.geomspace(0.01, 1e6, 200_000)
    S = scenario.fibre_psd_s2_per_hz(f, L)
    w = 4 * np.sin(np.pi * f / rate_hz) ** 2 * np.sinc(f / rate_hz) ** 2
    return float(math.sqrt(np.trapezoid(S * w, f)))


def aom_latency_frames(delay_frames: float) -> int:
    """The bank's aom_latency_ticks over a link (1..6): frames from emitting a tuning
    word to the sample it shows in. The word answering frame k is applied
    delay_frames (m + phi) after that frame's end, so it is on for the fraction
    1 - phi of frame k + 1 + m and for all of frame k + 2 + m; the bank's model
    switches at frame boundaries, so the nearest is round(delay) + 1 (an error of
    at most half a frame, transient: the model's phase catches up a frame later).
    Delays beyond 5.5 frames are clamped to 6 (the bank's ring)."""
    return int(min(6, max(1, math.floor(delay_frames + 0.5) + 1)))


def inloop_step_rms_s(servo, plant, scenario, length_m=None) -> float:
    """RMS frame-to-frame change of the closed loop's in-loop error (s, one-way), the
    scenario's longest link by default: frame_step_rms_s's integral with the
    sensitivity 1 / (1 + C P) of the servo on the plant (quantised coefficients)
    at every frequency's alias. A frame step beyond half a turn is a cycle the
    unwrapper takes the wrong way; this is the sigma it is measured in."""
    L = scenario.link_length_max_m if length_m is None else length_m
    rate = plant.rate_hz
    f = np.geomspace(0.01, 1e6, 100_000)
    z = np.exp(2j * np.pi * f / rate)
    b, a = controller_tf(servo, quantised=True)
    pn, pd = plant.tf()
    loop = (np.polyval(b, z) * np.polyval(pn, z)) / (np.polyval(a, z) * np.polyval(pd, z))
    w = 4 * np.sin(np.pi * f / rate) ** 2 * np.sinc(f / rate) ** 2
    return float(math.sqrt(np.trapezoid(np.abs(1.0 / (1.0 + loop)) ** 2 * w
                                        * scenario.fibre_psd_s2_per_hz(f, L), f)))


def bank_settings_for_link(scenario, n_channels, rate_hz, delay_frames, calibrate="never",
                           overrides=None):
    """(BankSettings, LoopReport) of the bank for a link loop: the scenario's preset
    (tools.presets) with what depends on the loop rate replaced: the designed servo,
    the noise shaper's zero at the PZT resonance when it is below Nyquist (else first
    order), an offload decimated to about 100 Hz, lock thresholds scaled to the
    predicted in-loop error (the 0.5 fs default assumes the 100 kHz loop), times of
    at least a few frames, the largest usable step per tick kept under half a
    turn, and the AOM model's latency from the loop delay (aom_latency_frames; the
    DDS clock and AOM range are the preset's: the model is exact at any loop rate).

    calibrate: the bank's delay calibration on insertion, "never" (default) or
    "auto" / "always". Over a link it does not succeed (measured, docs/hil.md
    section 3): its estimate is where the tuning word lands inside a frame (tens
    of us, the same on every channel), not the blade's round trip (tens of ns),
    and the AOM step a link rate allows (under half a turn per frame) moves the
    phase 1e-4 turn against a fibre that moves 0.04-0.16 turn per frame. It is
    selectable to measure exactly that (simulate_link). overrides: dict of
    BankSettings fields applied last (e.g. cal_step_turns). Fields a bank
    version does not have are left out."""
    from tools.presets import bank_settings_for
    servo, rep = design_servo(rate_hz, delay_frames, scenario)
    rate = float(rate_hz)
    base = bank_settings_for(scenario, n_channels)
    have = {f.name for f in dataclasses.fields(base)}
    res_s = rep.residual_as * 1e-18
    window = min(1.2e-15, max(0.5e-15, 4.0 * res_s))
    dec = max(0, int(math.floor(math.log2(max(1.0, rate / 100.0)))))
    off = base.offload
    ch = dict(
        loop_rate_hz=rate, servo=servo,
        offload=dataclasses.replace(off, decimation_log2=min(dec, 16)),
        noise_shaper="notch" if scenario.pzt_resonance_hz < rate / 2 else "first",
        lock_window_s=window, lock_time_s=max(2e-3, 10.0 / rate), loss_time_s=max(0.1e-3, 3.0 / rate),
        calibrate=calibrate, aom_latency_ticks=aom_latency_frames(delay_frames))
    if "loss_window_s" in have:
        # a link loop's in-loop error is Gaussian with about the predicted residual
        # (0.3-0.7 fs): the loss of lock at 8 sigma of it, never inside 1.5 windows
        loss = max(getattr(base, "loss_window_s"), 1.5 * window, 8.0 * res_s)
        ch["loss_window_s"] = loss
        if "error_range_s" in have:
            # The servo input must cover the loss window (the builder refuses a
            # window beyond it): at half a turn (1.29 fs, the default range) an
            # excursion of 3.7 sigma of a 350 as in-loop error saturates the input
            # and the loop dropped lock (measured: usbhs, 10 m links). The phase is
            # unwrapped before the error is formed, so a wider range loses nothing
            # but resolution: 4 loss windows and at least 16 half
            # turns (20.7 fs; the same range, 4 bits, for every design from 2 to
            # 10 kHz, so a re-design seldom rescales the servo's input), rounded up
            # to a power of two half-turns: 4-5 bits of a 2**-32 turn resolution.
            ch["error_range_s"] = max(base.error_range_s, 4.0 * loss, 8.0 * ONEWAY_S_PER_TURN)
    if "step_detect_s" in have:
        # NONRECIPROCITY: a step no reciprocal fibre makes. At a link's frame rate the
        # fibre itself moves by frame_step_rms per frame, and the closed loop's own
        # frame-to-frame error somewhat more (its sensitivity peak): keep the
        # detector 8 sigma above the larger
        plant = LinkPlant(rate, delay_frames, scenario.pzt_resonance_hz, scenario.pzt_q)
        step = max(frame_step_rms_s(scenario, rate), inloop_step_rms_s(servo, plant, scenario))
        ch["step_detect_s"] = max(base.step_detect_s, 8.0 * step)
        if "step_keep_turns" in have:
            # a step taken to HOLDOVER is kept (the cycle claimed) up to the
            # unwrapper's own limit, the max_slew step below: at a link rate the
            # closed loop moves 0.05-0.2 turn RMS per frame, and the 100 kHz
            # default (1/8 turn) declared a lost cycle on every detected step
            # (measured: usbhs, 10 m links, with the truth showing none lost)
            ch["step_keep_turns"] = max(base.step_keep_turns, 0.45)
    if "max_slew_s_per_s" in have:                       # under half a turn per tick
        ch["max_slew_s_per_s"] = min(base.max_slew_s_per_s, 0.45 * ONEWAY_S_PER_TURN * rate)
    ch.update(overrides or {})
    return dataclasses.replace(base, **{k: v for k, v in ch.items() if k in have}), rep


# ----------------------------------------------------------------------------- host loop

def _accepts_serial(bank) -> bool:
    try:
        return "blade_serial" in inspect.signature(bank.step).parameters
    except (TypeError, ValueError):
        return False


class HostLoop:
    """The bank on a SerialBackend, frame by frame. See the module docstring.

    rec: Recorder of n_max frames (truth = frame means); truth_msq [n_max, N] beside it.
    """

    def __init__(self, backend: SerialBackend, scenario, n_max: int, open_loop: bool = False,
                 redesign: bool = True):
        self.b = backend
        self.scenario = scenario
        self.n = backend.capabilities.n_channels
        self.rate = backend.frame_rate_hz
        self.open_loop = open_loop
        self.redesign = redesign
        self.rec = Recorder(n_max, self.n)
        self.truth_msq = np.full((n_max, self.n), np.nan)
        self.t_s = np.zeros(n_max)
        self.k = 0
        self.out = OutFrame.mid_scale(self.n)
        self.comm_events: list = []        # (t_s start, t_s end or None)
        self.redesigns: list = []
        self.lock_times = [None] * self.n
        self.fault_log: dict = {}
        self.delay_frames = None
        self.aom_moves = 0                 # frames in which the bank drove the AOM
        self.report = None
        self.bank = None

    # -------------------------------------------------------------- latency
    def delay_from_samples(self, samples) -> float | None:
        """Loop delay in frames: the 80th percentile of the PONG ages (the first
        quarter of the samples dropped as start-up) + the board's DAC latch (1.5
        board ticks), at most MAX_DELAY_FRAMES. Rare scheduling stalls of the host
        PC above the 80th percentile show as late frames, not as design delay."""
        ages = [s.age_s for s in samples if s.age_s is not None]
        if len(ages) >= 8:
            ages = ages[len(ages) // 4:]
        if not ages:
            return None
        tick = 1.0 / self.b.board_rate_hz
        d = (float(np.percentile(ages, 80)) + 1.5 * tick) * self.rate
        self.delay_clamped = d > MAX_DELAY_FRAMES
        return min(d, MAX_DELAY_FRAMES)

    def _hold_until(self, done, min_pings=0, timeout_s=30.0):
        """Exchange hold frames (every channel held, PING each frame) until done()."""
        b = self.b
        every, b.ping_every = b.ping_every, 1
        hold = OutFrame.mid_scale(self.n)
        hold.hold[:] = 1
        first = len(b.latency)
        t_give_up = time.perf_counter() + timeout_s
        try:
            while not done() or len(b.latency) - first < min_pings:
                try:
                    b.exchange(hold)
                except CommTimeout:
                    if time.perf_counter() > t_give_up:
                        raise
        finally:
            b.ping_every = every
        return list(b.latency)[first:]

    def measure(self, duration_s: float = MEASURE_S) -> float:
        """Stream with every channel on hold, PINGing every frame; returns the loop delay."""
        t_end = time.perf_counter() + duration_s
        samples = self._hold_until(lambda: time.perf_counter() >= t_end, min_pings=8)
        d = self.delay_from_samples(samples)
        if d is None:
            raise RuntimeError("no loop latency sample: the board answered no PING")
        return d

    def _design_in_background(self, delay_frames):
        """Design on a worker thread while the link is kept alive; -> (settings, report)."""
        box = {}

        def work():
            try:
                box["r"] = settings, _ = bank_settings_for_link(self.scenario, self.n, self.rate,
                                                                delay_frames)
                z = np.zeros(self.n, np.int16)
                Bank(settings).step(z, z)       # load the tick kernel before it is needed
            except BaseException as e:          # re-raised in the caller
                box["e"] = e
        th = threading.Thread(target=work, daemon=True)
        th.start()
        if self.bank is None:
            self._hold_until(lambda: not th.is_alive())
        th.join()
        if "e" in box:
            raise box["e"]
        return box["r"]

    def build(self, delay_frames: float):
        """Design for the delay (keeping the link alive meanwhile) and build or swap the bank."""
        settings, rep = self._design_in_background(delay_frames)
        self._apply(settings, rep, delay_frames)

    def _apply(self, settings, rep, delay_frames):
        self.delay_frames, self.report = delay_frames, rep
        if self.bank is None:
            self.bank = Bank(settings)
            self._serial_kw = _accepts_serial(self.bank)
        else:
            self.bank.swap_config(settings)
        self.redesigns.append({"frame": self.k, "delay_frames": round(delay_frames, 3),
                               **{k: round(v, 3) for k, v in rep.as_dict().items()}})

    # -------------------------------------------------------------- run
    def run(self, n_frames: int, progress=None):
        b, bank, out, rec = self.b, self.bank, self.out, self.rec
        st = bank.state
        gc.collect()
        gc.freeze()            # long-lived objects out of the collector's way: no long pauses
        in_outage = False
        last_faults = 0
        lat_seen = len(b.latency)
        t0 = time.perf_counter()
        step = bank.step
        serial_kw = self._serial_kw
        missing = getattr(bank, "step_missing", None)
        self._t_last, self._missed = time.perf_counter(), 0
        pending = None
        while self.k < n_frames:
            try:
                f = b.exchange(out)
            except CommTimeout:
                now = time.perf_counter()
                if not in_outage:
                    in_outage = True
                    self.comm_events.append([now - t0, None])
                if missing is not None and not self.open_loop:
                    # the bank's own holdover: one tick per frame period missed
                    k_due = int((now - self._t_last) * self.rate) - 1
                    for _ in range(min(max(k_due - self._missed, 0), 1000)):
                        try:
                            missing()
                        except AttributeError:  # no frame seen yet: nothing to hold
                            break
                    self._missed = max(self._missed, k_due)
                st.faults_live[:] |= COMM_TIMEOUT
                st.faults_sticky[:] |= COMM_TIMEOUT
                out.hold[:] = 1
                if now - t0 > 4 * n_frames / self.rate + 5.0:
                    break                               # the board is gone: stop, report
                continue
            self._t_last = time.perf_counter()
            self._missed = 0
            if in_outage:
                in_outage = False
                self.comm_events[-1][1] = time.perf_counter() - t0
                st.faults_live[:] &= ~np.uint32(COMM_TIMEOUT)
                out.hold[:] = 0
            k = self.k
            if not self.open_loop:
                if serial_kw:
                    codes = step(f.adc_i, f.adc_q, blade_serial=b.serials)
                else:
                    codes = step(f.adc_i, f.adc_q)
                out.pzt_code, out.spool_code, out.aom_ftw = codes
            if f.true_delay_s is not None:
                rec.truth[k] = f.true_delay_s
                self.truth_msq[k] = b.truth_msq
            else:
                rec.truth[k] = np.nan
            if out.aom_ftw.any():
                self.aom_moves += 1
            rec.pzt[k] = out.pzt_code
            rec.spool[k] = out.spool_code
            rec.state[k] = st.chan_state
            rec.err[k] = st.setpoint - st.phase_acc
            self.t_s[k] = time.perf_counter() - t0
            self.k = k + 1
            if (k & 63) == 63:
                self._log_faults(k)
                if progress is not None:
                    progress(self)
                if pending is not None and not pending[0].is_alive():
                    th, box, d = pending
                    pending = None
                    if "r" in box:
                        self._apply(*box["r"], d)
                if self.redesign and pending is None and len(b.latency) - lat_seen >= 32:
                    lat_seen = len(b.latency)
                    d = self.delay_from_samples(list(b.latency)[-64:])
                    if d is not None and abs(d - self.delay_frames) > REDESIGN_FRAMES:
                        pending = self._redesign_thread(d)
        self._log_faults(max(self.k - 1, 0))

    def _redesign_thread(self, d):
        box = {}

        def work():
            try:
                box["r"] = bank_settings_for_link(self.scenario, self.n, self.rate, d)
            except BaseException as e:
                box["e"] = e
        th = threading.Thread(target=work, daemon=True)
        th.start()
        return th, box, d

    def _log_faults(self, k):
        st = self.rec.state[max(0, k - 63):k + 1]
        for c in range(self.n):
            if self.lock_times[c] is None:
                hit = np.flatnonzero(st[:, c] == LOCKED)
                if hit.size:
                    self.lock_times[c] = (max(0, k - 63) + int(hit[0])) / self.rate
        _, sticky = self.bank.read_faults()
        t = (k + 1) / self.rate
        for c in np.flatnonzero(sticky):
            for name in flag_names(int(sticky[c])):
                log = self.fault_log.setdefault(int(c), [])
                if not log or log[-1]["flag"] != name or t - log[-1]["t_s"] > 0.5:
                    log.append({"flag": name, "t_s": round(t, 6)})


# ----------------------------------------------------------------------------- evaluation

def residual_of(mean_s, msq_s2, rate_hz, f_lo=1.0, f_hi=None):
    """Out-of-loop residual RMS (s) from per-frame truth means and intra-frame mean squares:
    band-limited RMS of the means (f_lo .. min(f_hi, R/2)) and the mean intra-frame
    variance, in quadrature. None if too few finite frames."""
    ok = np.isfinite(mean_s)
    if ok.sum() <= 16:
        return None
    x = mean_s[ok] - mean_s[ok].mean()
    hi = rate_hz / 2 if f_hi is None else min(f_hi, rate_hz / 2)
    r = analysis.residual_rms(x, rate_hz, f_lo, hi)
    intra = np.nanmean(msq_s2[ok]) if np.isfinite(msq_s2[ok]).any() else 0.0
    return math.sqrt(r * r + max(intra, 0.0))


def evaluate(loop: HostLoop, open_loop: bool):
    sc = loop.scenario
    rec, rate, n_used = loop.rec, loop.rate, loop.k
    slips = loop.bank.state.slip_count
    out = []
    for c in range(loop.n):
        col = rec.state[:n_used, c]
        seg = (0, n_used) if open_loop else locked_segment(col, rate, SETTLE_S)
        res = tdev = peak = None
        why = []
        if seg is not None:
            a, z = seg
            r = residual_of(rec.truth[a:z, c], loop.truth_msq[a:z, c], rate,
                            sc.residual_band_lo_hz, sc.residual_band_hi_hz)
            res = None if r is None else r / 1e-18
            x = rec.truth[a:z, c]
            x = x[np.isfinite(x)]
            if x.size > 16:
                t = analysis.tdev_at(x - x.mean(), rate, 1.0)
                tdev = None if not math.isfinite(t) else t / 1e-18
            p = rec.pzt[a:z, c]
            peak = float(np.max(np.abs(p.astype(np.int64) - PZT_MID)) / PZT_MID) if p.size else None
        state = STATE_NAMES[int(rec.state[n_used - 1, c])] if n_used else "EMPTY"
        if open_loop:
            why.append("open loop")
        else:
            if seg is None or res is None:
                why.append("never held lock" if loop.rec.truth is not None else "no truth")
            bar = sc.bar_residual_rms_s
            if bar is not None and res is not None and res > bar / 1e-18:
                why.append(f"residual {res:.1f} as > {bar / 1e-18:.0f} as")
            if sc.bar_slips is not None and slips[c] > sc.bar_slips:
                why.append(f"{int(slips[c])} slips")
            if sc.bar_pzt_peak_frac is not None and peak is not None and peak > sc.bar_pzt_peak_frac:
                why.append(f"PZT peak {100 * peak:.0f} % > {100 * sc.bar_pzt_peak_frac:.0f} %")
        out.append(ChannelResult(c, state, res, tdev, loop.lock_times[c], int(slips[c]), peak,
                                 loop.fault_log.get(c, []), not why, "; ".join(why)))
    return out


def cycles_lost(truth_s, state, rate_hz, smooth_s=20e-3):
    """Whole turns the loop really lost, from the ground truth (not the bank's own
    count): the true one-way delay of a channel, smoothed over smooth_s, after its
    first LOCKED frame, in whole turns (ONEWAY_S_PER_TURN, rounded); every change of
    that integer is a lost (or gained) cycle. A slip the bank cannot see (a frame
    step beyond half a turn that the unwrapper takes the wrong way) counts here.
    A blade swapped during the run starts a new truth on its channel: its count
    is then not a slip count. truth_s, state: [frames, N]. Returns int[N]."""
    n_f, n = truth_s.shape
    w = max(1, int(round(smooth_s * rate_hz)))
    out = np.zeros(n, int)
    for c in range(n):
        hit = np.flatnonzero(state[:, c] == LOCKED)
        if hit.size == 0:
            continue
        x = truth_s[hit[0]:, c]
        x = x[np.isfinite(x)]
        if x.size < w:
            continue
        m = np.convolve(x, np.ones(w) / w, mode="valid")
        turns = np.rint((m - m[0]) / ONEWAY_S_PER_TURN).astype(int)
        out[c] = int(np.abs(np.diff(turns)).sum())
    return out


class HilRunResult(RunResult):
    """RunResult plus the link figures (`link` in as_dict)."""

    def __init__(self, *a, link=None, **kw):
        super().__init__(*a, **kw)
        self.link = link or {}

    def as_dict(self):
        d = super().as_dict()
        d["link"] = self.link
        return d


def link_report(loop: HostLoop) -> dict:
    b = loop.b
    lat = b.latency_summary()
    st = b.dec.stats
    eff = {k: (b.payload_bytes[k] / b.wire_bytes[k] if b.wire_bytes[k] else None) for k in ("in", "out")}
    return {"port": b.port, "frame_rate_hz": loop.rate, "board_rate_hz": b.board_rate_hz,
            "stream_divider": b.stream_divider, "n_channels": loop.n,
            "loop_delay_frames": loop.delay_frames,
            "loop_delay_s": None if loop.delay_frames is None else loop.delay_frames / loop.rate,
            "latency": lat, "predicted_residual_as": None if loop.report is None else loop.report.residual_as,
            "design": loop.redesigns, "frames": loop.k, "skipped": b.skipped,
            "comm_timeouts": b.timeouts, "comm_outages": loop.comm_events,
            "reconnects": b.reconnects, "decoder": st.as_dict(), "efficiency": eff,
            "aom_moves": loop.aom_moves,
            "cycles_lost": cycles_lost(loop.rec.truth[:loop.k], loop.rec.state[:loop.k],
                                       loop.rate).tolist()}


def run_hil(hal_url, scenario, duration_s, n_channels, seed, args):
    """`attobus run --hal serial://...`: -> (HilRunResult, Recorder)."""
    if getattr(args, "inject", None):
        raise ValueError("--inject acts on the simulated rig; over a link, give the emulator "
                         "its faults (attobus board --fault SPEC, docs/hil.md)")
    b = SerialBackend.from_url(hal_url)
    b.ping_every = PING_EVERY
    try:
        b.open()
    except BackendError as e:
        raise ValueError(str(e)) from None
    try:
        n = b.capabilities.n_channels
        if getattr(args, "channels", None) and args.channels != n:
            raise ValueError(f"--channels {args.channels}, but the board has {n} channels")
        rate = b.frame_rate_hz
        n_frames = max(1, int(round(duration_s * rate)))
        loop = HostLoop(b, scenario, n_frames, open_loop=getattr(args, "open_loop", False))
        loop.build(loop.measure())
        t0 = time.perf_counter()
        loop.run(n_frames)
        wall = time.perf_counter() - t0
        results = evaluate(loop, loop.open_loop)
        rec = loop.rec
        if loop.k < n_frames:                          # the board went away: keep what ran
            for name in ("truth", "pzt", "spool", "state", "err"):
                setattr(rec, name, getattr(rec, name)[:loop.k])
        res = HilRunResult(scenario.name, seed, rate, (loop.k / rate) / max(wall, 1e-9),
                           loop.k / rate, loop.open_loop, results, link=link_report(loop))
        return res, rec
    finally:
        b.close()


# ----------------------------------------------------------------------------- virtual time

class _MemTruth:
    """In-memory stand-in for the emulator's truth file (simulate_link)."""

    def __init__(self):
        self.by_tick = {}

    def write(self, tick64, mean, msq):
        self.by_tick[tick64 & 0xFFFFFFFF] = (mean.copy(), msq.copy())

    def close(self):
        pass


class _SimLoop:
    """What `evaluate` reads of a HostLoop, for simulate_link."""

    def __init__(self, scenario, n, rate, n_max):
        self.scenario, self.n, self.rate = scenario, n, rate
        self.rec = Recorder(n_max, n)
        self.truth_msq = np.full((n_max, n), np.nan)
        self.k = 0
        self.lock_times = [None] * n
        self.fault_log = {}
        self.bank = None


def simulate_link(scenario, n_channels, link, duration_s, *, seed=1, host_compute_s=100e-6,
                  frame_rate_hz=None, board_rate_hz=None, measure_frames=64, calibrate="never",
                  overrides=None):
    """The closed loop over an emulated link in virtual time: the board emulator and
    its link model (sim_hw.board, sim_hw.link) exactly as `attobus board` runs them,
    and a host that answers every ADC frame host_compute_s after it arrives (a host
    fast enough for the link: what the link allows, whatever PC runs the emulation).
    Same design procedure as the real-time loop (measure the loop delay on hold
    frames, design, run). Returns (results, info): per-channel ChannelResult and a
    dict with frame_rate_hz, board_rate_hz, loop delay (s, frames), predicted
    residual of the design, frames run, the frames in which the bank drove the
    AOM (aom_moves), and per channel its calibration (`calibration`: status name,
    the estimate and its sigma (s, whatever the status), the rig's true round
    trip). calibrate, overrides: passed to bank_settings_for_link."""
    from hal import wire
    from sim_hw.board import Board, BoardOptions
    from sim_hw.link import LinkDirection
    board = Board(BoardOptions(scenario=scenario, n_channels=n_channels, seed=seed, link=link,
                               frame_rate_hz=frame_rate_hz, board_rate_hz=board_rate_hz))
    board.truth = _MemTruth()
    up = LinkDirection(board.profile, 7, "up")
    down = LinkDirection(board.profile, 7, "down")
    board.send, board.backlog = up.submit, up.backlog_s
    rate = board.frame_rate_hz
    n = n_channels
    n_frames = int(round(duration_s * rate))
    loop = _SimLoop(scenario, n, rate, n_frames)
    enc, dec = wire.Encoder(), wire.Decoder()
    down.submit(enc.message(wire.Hello()), 0.0)
    ages = []
    measuring = True
    out = OutFrame.mid_scale(n)
    # what the host learns from the board's first STATUS: the blades present
    serials = np.where(board.rig.present != 0, board.rig.blade_serial, 0).astype(np.uint64)
    t = 0.0
    delay = None
    aom_moves = 0
    while loop.k < n_frames:
        due = [board.next_event_time()]
        for d in (up, down):
            x = d.next_due()
            if x is not None:
                due.append(x)
        t = max(t, min(due))
        for at, data in down.pop_due(t):
            board.receive(data, at)
        board.advance(t)
        for at, data in up.pop_due(t):
            for f in dec.feed(data):
                if f.type != wire.MsgType.ADC or f.late or loop.k >= n_frames:
                    continue
                m = f.msg
                for ev in m.events:
                    serials[ev.ch] = ev.serial if ev.kind == wire.BladeEventKind.INSERTED else 0
                if measuring:
                    hold = (1 << n) - 1
                    t_send = at + host_compute_s
                    frame = enc.dac(m.tick, out.pzt_code, out.spool_code, out.aom_ftw, hold=hold)
                    ages.append(t_send + down.wire_time(len(frame), t_send)
                                + down.latency(t_send) - board._frame_times.get(m.tick, at))
                    down.submit(frame, t_send)
                    if len(ages) >= measure_frames:
                        tick = 1.0 / board.rate
                        delay = (float(np.percentile(ages[len(ages) // 4:], 80)) + 1.5 * tick) * rate
                        settings, rep = bank_settings_for_link(scenario, n, rate, min(delay, MAX_DELAY_FRAMES),
                                                               calibrate, overrides)
                        loop.bank = Bank(settings)
                        loop.report = rep
                        measuring = False
                    continue
                bank = loop.bank
                if "blade_serial" in inspect.signature(bank.step).parameters:
                    codes = bank.step(m.i.copy(), m.q.copy(), blade_serial=serials)
                else:
                    codes = bank.step(m.i.copy(), m.q.copy())
                out.pzt_code, out.spool_code, out.aom_ftw = codes
                if out.aom_ftw.any():
                    aom_moves += 1
                down.submit(enc.dac(m.tick, out.pzt_code, out.spool_code, out.aom_ftw),
                            at + host_compute_s)
                k = loop.k
                got = board.truth.by_tick.pop(m.tick, None)
                if got is not None:
                    loop.rec.truth[k], loop.truth_msq[k] = got
                else:
                    loop.rec.truth[k] = np.nan
                st = bank.state
                loop.rec.pzt[k] = out.pzt_code
                loop.rec.spool[k] = out.spool_code
                loop.rec.state[k] = st.chan_state
                loop.rec.err[k] = st.setpoint - st.phase_acc
                loop.k = k + 1
                if (k & 63) == 63 or loop.k == n_frames:
                    HostLoop._log_faults(loop, k)
        if len(board.truth.by_tick) > 4096:
            for key in list(board.truth.by_tick)[:2048]:
                del board.truth.by_tick[key]
    results = evaluate(loop, False)
    info = {"link": board.profile.name, "n_channels": n, "frame_rate_hz": rate,
            "board_rate_hz": board.rate, "stream_divider": board.divider,
            "loop_delay_frames": delay, "loop_delay_s": None if delay is None else delay / rate,
            "predicted_residual_as": loop.report.residual_as, "frames": loop.k,
            "frame_step_rms_as": frame_step_rms_s(scenario, rate) / 1e-18,
            "host_compute_s": host_compute_s, "aom_moves": aom_moves,
            "cycles_lost": cycles_lost(loop.rec.truth[:loop.k], loop.rec.state[:loop.k], rate).tolist(),
            "aom_latency_ticks": loop.bank.settings.aom_latency_ticks,
            "calibration": [{"status": CAL_STATUS_NAMES[int(loop.bank.register("cal_status")[c])],
                             "tau_rt_s": float(loop.bank.register("tau_rt_fs")[c]) * 1e-15,
                             "sigma_s": float(loop.bank.register("tau_rt_sigma_fs")[c]) * 1e-15,
                             "true_tau_rt_s": float(board.rig.tau_rt_s[c]),
                             "cal_ok": bool(loop.bank.register("cal_ok")[c])} for c in range(n)]}
    return results, info


PLANNING = (("uart1m", 4, None), ("uart1m", 10, None), ("uart1m", 40, None),
            ("uart12m", 4, None), ("uart12m", 10, None), ("uart12m", 40, None),
            ("usbhs", 10, None), ("usbhs", 40, None))

# What holds lock: every channel on rack10's longest link (10 m) unless shorter,
# several seeds per row (docs/hil.md section 4, "what holds lock").
# (link, channels, frame rate or None, link length m or None, seeds)
PLANNING_HOLD = (("uart1m", 1, None, 10.0, (1, 2, 3, 4)),
                 ("uart1m", 1, None, 5.0, (1, 2, 3, 4)),
                 ("uart1m", 2, None, 5.0, (1, 2, 3, 4)),
                 ("uart1m", 2, None, 2.5, (1, 2, 3, 4)),
                 ("uart12m", 10, None, 10.0, (1, 2, 3)),
                 ("uart12m", 20, None, 10.0, (1, 2)),
                 ("uart12m", 40, None, 10.0, (1, 2)),
                 ("usbhs", 10, None, 10.0, (1, 2, 3)),
                 ("usbhs", 40, None, 10.0, (1, 2, 3)))


def planning_rows(scenario="rack10", duration_s=3.0, rows=PLANNING, seed=1):
    """The planning table of docs/hil.md (a generator, one dict per row).

    rows: (link, channels, frame rate or None for the link's default), optionally
    followed by the link length (m; None: the scenario's drawn lengths; a number:
    every channel on a link of that length) and the seeds (default (seed,)).
    Each row gives simulate_link's figures (of the first seed: frame rate, loop
    delay, the fibre's frame-to-frame step, the design's predicted residual on the
    longest link) and, over all seeds, the simulated out-of-loop residual (median
    and worst channel), the slips the bank counted and the cycles really lost
    (from the truth, `cycles_lost`), each in total and per seed, the channels
    locked at the end (total, of channels x seeds), the longest first-lock time."""
    from sim_hw.scenarios import get_scenario
    scen = get_scenario(scenario) if isinstance(scenario, str) else scenario
    for row in rows:
        link, n, rate = row[:3]
        length = row[3] if len(row) > 3 else None
        seeds = tuple(row[4]) if len(row) > 4 and row[4] is not None else (seed,)
        sc = scen if length is None else dataclasses.replace(scen, link_lengths_m=(float(length),))
        host = 20e-6 if rate and rate > 10_000 else 100e-6
        info0, r, slips, lost, locked, lock_t = None, [], [], [], 0, 0.0
        for sd in seeds:
            res, info = simulate_link(sc, n, link, duration_s, seed=sd, frame_rate_hz=rate,
                                      host_compute_s=host)
            info0 = info0 or info
            r += [c.residual_as_rms for c in res if c.residual_as_rms is not None]
            slips.append(int(sum(c.slips for c in res)))
            lost.append(int(sum(info["cycles_lost"])))
            locked += sum(c.state == "LOCKED" for c in res)
            lock_t = max([lock_t] + [(c.lock_time_s or math.inf) for c in res])
        yield {**info0, "length_m": length, "seeds": seeds, "duration_s": duration_s,
               "residual_median_as": float(np.median(r)) if r else None,
               "residual_worst_as": max(r) if r else None,
               "slips": int(sum(slips)), "slips_per_seed": slips,
               "cycles_lost": int(sum(lost)), "cycles_lost_per_seed": lost,
               "locked": locked, "of": n * len(seeds), "lock_time_max_s": lock_t}
