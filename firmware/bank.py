"""The 40-channel servo bank: settings -> build() -> config, state, tick.

Data flow per tick and channel (all integer):
  I/Q (int16) -> power, atan2 -> phase (int32 turns) -> unwrap (int64)
  -> error = setpoint - phase, saturated to int32 -> biquad cascade (Q2.29)
  -> PZT: noise-shaped 20-bit code, and the decimated spool offload -> 16-bit code
  -> AOM: noise-shaped DDS tuning-word offset

Config and state are namedtuples of numpy arrays, one array per field
(struct of arrays, length N on the first axis). Config is immutable between
ticks: `Bank.swap_config` replaces it whole, between two ticks, and makes the
change bumpless (see `bumpless_rehistory`). The tick allocates nothing.
"""
from __future__ import annotations

import math
from collections import namedtuple
from dataclasses import dataclass, field, replace

import numpy as np
from numba import njit

from firmware import units
from firmware.atan2 import atan2_turns_scalar
from firmware.biquad import biquad_step, biquad_step_at, COEFF_ONE, HOLD_COEFFS, A1, A2
from firmware.channel_fsm import fsm_step, MODE_RUN, MODE_HOLD, ACT_CAPTURE
from firmware.faults import (LOCKED, PZT_SAT, SPOOL_SAT, ADC_OVERRANGE, WEAK_RETURN,
                             LOSS_OF_LOCK, CYCLE_SLIP)
from firmware.noise_shaper import shape_step, notch_coefficients, PLAIN, FIRST_ORDER
from firmware.power import return_power
from firmware.servo_build import (ServoSettings, ZeroIntegratorSettings, NotchSettings,
                                  LowpassSettings, tustin, quantise, INT32_MAX, INT32_MIN)
from firmware.unwrap import is_slip, wrap_diff

MAX_STAGES = 4
MAX_CHANNELS = 256

ACT_PZT, ACT_AOM = 0, 1

PZT_DROP_BITS = 32 - units.PZT_DAC_BITS          # 12: int32 command -> 20-bit code
PZT_MID = 1 << (units.PZT_DAC_BITS - 1)
SPOOL_DROP_BITS = 32 - units.SPOOL_DAC_BITS      # 16
SPOOL_MID = 1 << (units.SPOOL_DAC_BITS - 1)
AOM_DROP_BITS = 8                                # servo output LSB = 1/256 DDS LSB
DDS_CLOCK_HZ = 1e9

BankConfig = namedtuple("BankConfig", [
    "coeffs", "limits", "hold_coeffs", "actuator",
    "ns_c1", "ns_c2", "aom_min", "aom_max",
    "off_coeffs", "off_limits", "off_shift",
    "detect_power", "detect_ticks", "lock_window", "lock_ticks", "loss_ticks",
    "max_step_codes", "adc_overrange",
])

BankState = namedtuple("BankState", [
    "tick", "phase_last", "phase_acc", "setpoint", "hist", "active", "mode", "err", "step",
    "servo_y", "ns_err",
    "off_sum", "off_hist", "pzt_code", "spool_code", "aom_ftw",
    "chan_state", "fsm_count", "weak_count", "faults_live", "faults_sticky",
    "slip_count", "relock_count", "power",
])


@dataclass(frozen=True)
class OffloadSettings:
    """Slow PZT -> spool offload (runs only while LOCKED).

    gain_per_s: crossover of the offload loop, 1/s, (0, 10]. Default 0.2.
    spool_tau_s: the spool's thermal time constant, s, cancelled by a lead. Default 30.
    lead_ratio: how much faster the compensated spool is (>= 1). Default 10.
    decimation_log2: the offload runs every 2**k ticks, 0..16. Default 8.
    pzt_range_s / spool_range_s: one-way half ranges, s (+-2 ps, +-50 ps).
    """
    gain_per_s: float = 0.2
    spool_tau_s: float = 30.0
    lead_ratio: float = 10.0
    decimation_log2: int = 8
    pzt_range_s: float = 2e-12
    spool_range_s: float = 50e-12

    def build(self, loop_rate_hz):
        if not (0 <= int(self.decimation_log2) <= 16):
            raise ValueError(f"decimation_log2 {self.decimation_log2} outside 0..16")
        for name in ("gain_per_s", "spool_tau_s", "lead_ratio", "pzt_range_s", "spool_range_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"offload {name} must be finite and > 0, got {v!r}")
        if not 0 < self.gain_per_s <= 10:
            raise ValueError(f"offload gain_per_s {self.gain_per_s} outside (0, 10] 1/s")
        if self.lead_ratio < 1:
            raise ValueError(f"offload lead_ratio {self.lead_ratio} must be >= 1")
        rate = loop_rate_hz / (1 << int(self.decimation_log2))
        tau, m, k = self.spool_tau_s, self.lead_ratio, self.gain_per_s
        # C(s) = k (1 + s tau) / (s (1 + s tau/m)): integrator, lead cancelling the spool pole.
        b, a = tustin([k * tau, k], [tau / m, 1.0, 0.0], rate)
        # input: PZT command units (2 pzt_range / 2**32 s), output: spool units.
        scale = self.pzt_range_s / self.spool_range_s
        return quantise(b * scale, a, name="offload")


def pzt_unit_s(pzt_range_s=2e-12):
    """One-way delay of one LSB of the int32 PZT command."""
    return 2 * pzt_range_s / 2.0 ** 32


def aom_unit_hz():
    """Optical frequency of one LSB of the AOM servo output (1/256 DDS LSB)."""
    return DDS_CLOCK_HZ / 2.0 ** 32 / (1 << AOM_DROP_BITS)


def default_servo(loop_rate_hz=100e3, pzt_range_s=2e-12):
    """The rack servo of docs/loop_design.md for the 30 kHz Q 10 PZT at 100 kHz.

    K (1 + w_z/s)^2 x notch x low-pass: two integrators for 40 dB/decade of
    suppression in the acoustic band, a high-Q notch near Nyquist and a
    low-Q low-pass that together roll the loop off over the resonance.
    Designed by `tools.loop_design.design_rack` on the two-tick,
    integrate-and-dump plant with slack: crossover 3.9 kHz, phase margin
    47 deg, gain margin 6.5 dB, sensitivity peak 5.7 dB, unchanged after
    Q2.29 quantisation. At other loop rates the corner frequencies scale with
    the rate (the plant's delay is counted in ticks); re-check with
    `tools.loop_design.analyse`.
    """
    k = loop_rate_hz / 100e3
    return ServoSettings(
        sections=(ZeroIntegratorSettings(gain=0.5557, corner_hz=3598.0 * k, order=2),
                  NotchSettings(f_hz=min(42960.0 * k, 0.49 * loop_rate_hz), q=13.92),
                  LowpassSettings(f_hz=min(39260.0 * k, 0.49 * loop_rate_hz), q=0.3009)),
        loop_rate_hz=loop_rate_hz,
        unit_scale=units.ONEWAY_S_PER_PHASE_CODE / pzt_unit_s(pzt_range_s),
    )


@dataclass(frozen=True)
class BankSettings:
    """Everything the bank needs, in physical units (edges), one value per bank
    or a tuple of per-channel values where noted.

    n_channels: 1..256, default 40.
    loop_rate_hz: tick rate, default 100 kHz.
    actuator: "pzt" (PZT + spool offload) or "aom" (DDS frequency). Default "pzt".
    servo: ServoSettings (unit_scale is set from the actuator), or a tuple of
        them per channel. Default: `default_servo`.
    offload: OffloadSettings.
    noise_shaper: "notch" (NTF zero at pzt_resonance_hz), "first", or "plain".
    pzt_resonance_hz: where the noise shaper puts its zero. Default 30 kHz.
    detect_power_codes2: return power I^2+Q^2 (ADC codes^2) to see a blade; default
        (16384/4)^2, i.e. -12 dB below nominal amplitude.
    detect_time_s: debounce before a blade counts as present. Default 1 ms.
    lock_window_s: |one-way error| for lock, s. Default 0.5 fs.
    lock_time_s: time inside the window before LOCKED (slow). Default 2 ms.
    loss_time_s: time outside before loss is declared (fast). Default 0.1 ms.
    max_slew_s_per_s: largest one-way delay rate the loop can follow; a larger
        phase step in one tick is flagged as a cycle slip. Default 1e-9 s/s.
    aom_range_hz: AOM servo range +- Hz. Default 1 MHz.
    adc_overrange_codes: |I| or |Q| at or above this raises ADC_OVERRANGE. Default 32767.
    """
    n_channels: int = 40
    loop_rate_hz: float = 100e3
    actuator: str = "pzt"
    servo: object = None
    offload: OffloadSettings = field(default_factory=OffloadSettings)
    noise_shaper: str = "notch"
    pzt_resonance_hz: float = 30e3
    detect_power_codes2: float = 4096.0 ** 2
    detect_time_s: float = 1e-3
    lock_window_s: float = 0.5e-15
    lock_time_s: float = 2e-3
    loss_time_s: float = 0.1e-3
    max_slew_s_per_s: float = 1e-9
    aom_range_hz: float = 1e6
    adc_overrange_codes: int = 32767

    def build(self) -> BankConfig:
        n = self.n_channels
        if not (isinstance(n, (int, np.integer)) and 1 <= n <= MAX_CHANNELS):
            raise ValueError(f"n_channels must be an integer in 1..{MAX_CHANNELS}, got {n!r}")
        rate = self.loop_rate_hz
        if not (math.isfinite(rate) and 0 < rate <= 10e6):
            raise ValueError(f"loop_rate_hz must be in (0, 10 MHz], got {rate!r}")
        if self.actuator not in ("pzt", "aom"):
            raise ValueError(f"actuator must be 'pzt' or 'aom', got {self.actuator!r}")
        kind = ACT_PZT if self.actuator == "pzt" else ACT_AOM
        for name in ("detect_power_codes2", "detect_time_s", "lock_window_s", "lock_time_s",
                     "loss_time_s", "max_slew_s_per_s", "aom_range_hz"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be finite and > 0, got {v!r}")

        servos = self.servo if isinstance(self.servo, tuple) else (self.servo,) * n
        if len(servos) != n:
            raise ValueError(f"{len(servos)} servo settings for {n} channels")
        if kind == ACT_PZT:
            scale = units.ONEWAY_S_PER_PHASE_CODE / pzt_unit_s(self.offload.pzt_range_s)
        else:
            # dtau/dt = delta_f / nu: a controller in 1/s gives Hz = nu * C * error_s.
            scale = units.ONEWAY_S_PER_PHASE_CODE * units.OPTICAL_FREQ_HZ / aom_unit_hz()
        coeffs = np.empty((MAX_STAGES, 5, n), np.int32)       # stage-major: channel contiguous
        limits = np.empty((MAX_STAGES, 2, n), np.int32)
        cache = {}
        for c, s in enumerate(servos):
            s = default_servo(rate, self.offload.pzt_range_s) if s is None else s
            s = replace(s, loop_rate_hz=rate, unit_scale=scale)
            if kind == ACT_AOM:
                lim = min(int(self.aom_range_hz / aom_unit_hz()), INT32_MAX)
                s = replace(s, out_min=-lim, out_max=lim)
            if s not in cache:
                cache[s] = s.build(MAX_STAGES)
            coeffs[:, :, c], limits[:, :, c] = cache[s]

        if self.noise_shaper == "notch":
            c1, c2 = notch_coefficients(self.pzt_resonance_hz, rate)
        elif self.noise_shaper == "first":
            c1, c2 = FIRST_ORDER
        elif self.noise_shaper == "plain":
            c1, c2 = PLAIN
        else:
            raise ValueError(f"noise_shaper must be 'notch', 'first' or 'plain', got {self.noise_shaper!r}")

        off = self.offload.build(rate)
        ticks = lambda t: max(1, int(round(t * rate)))
        codes_per_s = 1.0 / units.ONEWAY_S_PER_PHASE_CODE
        window = self.lock_window_s * codes_per_s
        if window >= units.HALF_TURN:
            raise ValueError(f"lock_window_s {self.lock_window_s} is half a turn or more")
        if self.lock_time_s < self.loss_time_s:
            raise ValueError("lock_time_s must be >= loss_time_s (slow to lock, fast to lose)")
        max_step = min(self.max_slew_s_per_s / rate * codes_per_s, 2.0 ** 31)
        full = lambda v, dt: np.full(n, v, dt)
        return BankConfig(
            coeffs=coeffs, limits=limits,
            hold_coeffs=HOLD_COEFFS.copy(),
            actuator=full(kind, np.uint8),
            ns_c1=full(c1, np.int32), ns_c2=full(c2, np.int32),
            aom_min=full(-min(int(self.aom_range_hz / aom_unit_hz()) >> AOM_DROP_BITS, INT32_MAX), np.int32),
            aom_max=full(min(int(self.aom_range_hz / aom_unit_hz()) >> AOM_DROP_BITS, INT32_MAX), np.int32),
            off_coeffs=np.tile(off, (n, 1)),
            off_limits=np.tile(np.array([INT32_MIN, INT32_MAX], np.int32), (n, 1)),
            off_shift=np.int64(self.offload.decimation_log2),
            detect_power=full(int(self.detect_power_codes2), np.int64),
            detect_ticks=full(ticks(self.detect_time_s), np.int32),
            lock_window=full(int(window), np.int64),
            lock_ticks=full(ticks(self.lock_time_s), np.int32),
            loss_ticks=full(ticks(self.loss_time_s), np.int32),
            max_step_codes=full(int(max_step), np.int64),
            adc_overrange=full(int(self.adc_overrange_codes), np.int32),
        )


def new_state(cfg: BankConfig) -> BankState:
    n = cfg.coeffs.shape[2]
    z = lambda dt, *shape: np.zeros((n,) + shape, dt)
    active = np.empty_like(cfg.coeffs)
    active[:] = cfg.hold_coeffs[None, :, None]                  # parked until a blade is seen
    return BankState(
        tick=np.zeros(1, np.int64), phase_last=z(np.int32), phase_acc=z(np.int64),
        setpoint=z(np.int64), hist=np.zeros((MAX_STAGES, 4, n), np.int32), active=active,
        mode=z(np.uint8), err=z(np.int32), step=z(np.int32), servo_y=z(np.int32),
        ns_err=z(np.int32, 2), off_sum=z(np.int64), off_hist=z(np.int32, 4),
        pzt_code=np.full(n, PZT_MID, np.int32), spool_code=np.full(n, SPOOL_MID, np.int32),
        aom_ftw=z(np.int32), chan_state=z(np.uint8), fsm_count=z(np.int32),
        weak_count=z(np.int32), faults_live=z(np.uint32), faults_sticky=z(np.uint32),
        slip_count=z(np.int64), relock_count=z(np.int64), power=z(np.int64),
    )


@njit(cache=True)
def tick_batch(cfg, st, adc_i, adc_q, pzt_out, spool_out, aom_out):
    """T ticks of the whole bank: ADC frames in, actuator frames out (in place).

    adc_i, adc_q: int16[T, N]; pzt_out, spool_out, aom_out: int32[T, N]; row t
    is tick t. `tick` is this with T = 1.

    Each tick is four passes over the channels, each a tight loop over
    unit-stride arrays: the phase front end, the state ladder (branchy,
    scalar, cheap), the biquad cascade stage by stage (uniform: HOLD/PARK
    are coefficient sets, not branches) and the actuators. Namedtuple fields
    are unpacked once per call: each unpacking costs reference counting.
    """
    n = adc_i.shape[1]
    phase_last, phase_acc, setpoint, err, steps = (st.phase_last, st.phase_acc, st.setpoint,
                                                   st.err, st.step)
    power, live, sticky = st.power, st.faults_live, st.faults_sticky
    chan_state, fsm_count, weak_count, mode = st.chan_state, st.fsm_count, st.weak_count, st.mode
    detect_power, lock_window, max_step, overrange = (cfg.detect_power, cfg.lock_window,
                                                      cfg.max_step_codes, cfg.adc_overrange)
    detect_ticks, lock_ticks, loss_ticks = cfg.detect_ticks, cfg.lock_ticks, cfg.loss_ticks
    slip_count, relock_count = st.slip_count, st.relock_count
    coeffs, hold, active, hist, limits, servo_y = (cfg.coeffs, cfg.hold_coeffs, st.active,
                                                   st.hist, cfg.limits, st.servo_y)
    pzt_code, spool_code, aom_ftw, ns_err = st.pzt_code, st.spool_code, st.aom_ftw, st.ns_err
    ns_c1, ns_c2, actuator, off_sum = cfg.ns_c1, cfg.ns_c2, cfg.actuator, st.off_sum
    aom_min, aom_max, off_shift, tick_count = cfg.aom_min, cfg.aom_max, cfg.off_shift, st.tick
    n_stages = active.shape[0]
    last = n_stages - 1
    for t in range(adc_i.shape[0]):
        # 1. phase front end: power, atan2 (int32 turns), unwrap (int64), error (int32, saturated)
        for c in range(n):
            i = np.int32(adc_i[t, c])
            q = np.int32(adc_q[t, c])
            power[c] = return_power(i, q)
            ph = atan2_turns_scalar(q, i)
            step = wrap_diff(ph, phase_last[c])
            acc = phase_acc[c] + np.int64(step)
            phase_acc[c] = acc
            phase_last[c] = ph
            steps[c] = step                        # for the slip check of pass 2
            err[c] = np.int32(max(min(setpoint[c] - acc, np.int64(INT32_MAX)), np.int64(INT32_MIN)))
        # 2. state ladder
        for c in range(n):
            i = np.int32(adc_i[t, c])
            q = np.int32(adc_q[t, c])
            bits = np.uint32(0)
            if max(abs(i), abs(q)) >= overrange[c]:
                bits |= np.uint32(ADC_OVERRANGE)
            s, cnt, wc, m, fbits, action = fsm_step(
                chan_state[c], fsm_count[c], weak_count[c], power[c] < detect_power[c],
                abs(np.int64(err[c])) <= lock_window[c], is_slip(steps[c], max_step[c]),
                detect_ticks[c], lock_ticks[c], loss_ticks[c])
            chan_state[c] = s
            fsm_count[c] = cnt
            weak_count[c] = wc
            bits |= np.uint32(fbits)
            if fbits & CYCLE_SLIP:
                slip_count[c] += 1
            if fbits & LOSS_OF_LOCK:
                relock_count[c] += 1
            if action == ACT_CAPTURE:
                setpoint[c] = phase_acc[c]
                err[c] = 0
                for sg in range(n_stages):
                    for j in range(4):
                        hist[sg, j, c] = 0
            if m != mode[c]:
                # Load the coefficients the new mode runs with: RUN the servo's,
                # HOLD/PARK the hold set (outputs kept, input history current).
                mode[c] = m
                for sg in range(n_stages):
                    for j in range(5):
                        active[sg, j, c] = coeffs[sg, j, c] if m == MODE_RUN else hold[j]
            live[c] = (live[c] & ~np.uint32(WEAK_RETURN | LOSS_OF_LOCK | CYCLE_SLIP | ADC_OVERRANGE)) | bits
            sticky[c] |= bits
        # 3. servo cascade, stage by stage
        for c in range(n):
            servo_y[c] = err[c]
        for sg in range(n_stages):
            for c in range(n):
                servo_y[c] = biquad_step_at(active, hist, limits, sg, c, servo_y[c])
        # 4. actuators
        for c in range(n):
            y = servo_y[c]
            if actuator[c] == ACT_PZT:
                pzt_code[c] = shape_step(y, PZT_DROP_BITS, ns_c1[c], ns_c2[c], ns_err, c,
                                         -PZT_MID, PZT_MID - 1) + PZT_MID
                sat = (y <= limits[last, 0, c]) | (y >= limits[last, 1, c])
                live[c] = (live[c] & ~np.uint32(PZT_SAT)) | (np.uint32(PZT_SAT) if sat else np.uint32(0))
                if sat:
                    sticky[c] |= np.uint32(PZT_SAT)
                if chan_state[c] == LOCKED:
                    off_sum[c] += y
            else:
                aom_ftw[c] = shape_step(y, AOM_DROP_BITS, 0, 0, ns_err, c, aom_min[c], aom_max[c])
            pzt_out[t, c] = pzt_code[c]
            aom_out[t, c] = aom_ftw[c]
        # 5. the spool offload, decimated: every 2**off_shift ticks on the mean PZT command
        k = tick_count[0]
        if (k & ((np.int64(1) << off_shift) - 1)) == 0:
            _offload(cfg, st)
        for c in range(n):
            spool_out[t, c] = spool_code[c]
        tick_count[0] = k + 1


@njit(cache=True)
def _offload(cfg, st):
    """PZT -> spool: the mean PZT command through the offload section -> 16-bit spool code."""
    for c in range(st.off_sum.shape[0]):
        if cfg.actuator[c] != ACT_PZT:
            continue
        xo = np.int32(st.off_sum[c] >> cfg.off_shift)
        st.off_sum[c] = 0
        lo = cfg.off_limits[c, 0]
        hi = cfg.off_limits[c, 1]
        yo = biquad_step(cfg.off_coeffs[c], st.off_hist[c], lo, hi, xo)
        sc = (np.int64(yo) + (1 << (SPOOL_DROP_BITS - 1))) >> SPOOL_DROP_BITS
        st.spool_code[c] = np.int32(min(max(sc, -SPOOL_MID), SPOOL_MID - 1) + SPOOL_MID)
        sat = (yo <= lo) | (yo >= hi)
        st.faults_live[c] = (st.faults_live[c] & ~np.uint32(SPOOL_SAT)) | (np.uint32(SPOOL_SAT) if sat else np.uint32(0))
        if sat:
            st.faults_sticky[c] |= np.uint32(SPOOL_SAT)


@njit(cache=True)
def tick(cfg, st, adc_i, adc_q, pzt_out, spool_out, aom_out):
    """One tick: adc_i, adc_q int16[N] in; pzt_out, spool_out, aom_out int32[N] out."""
    # [np.newaxis, :] views any layout (strided columns of a frame too) as one row
    tick_batch(cfg, st, adc_i[np.newaxis, :], adc_q[np.newaxis, :], pzt_out[np.newaxis, :],
               spool_out[np.newaxis, :], aom_out[np.newaxis, :])


def bumpless_rehistory(old: BankConfig, new: BankConfig, st: BankState) -> None:
    """Rewrite stage histories so a coefficient change does not kick the output.

    For each stage whose coefficients changed, the output history is kept
    (y1 = y2 = last output) and the input history set to the input that holds
    that output in steady state under the new coefficients:
    x_eq = y (1 + a1 + a2) / (b0 + b1 + b2); integrators (1 + a1 + a2 = 0)
    get x_eq = 0. The next output then continues from the last one.
    """
    changed = np.any(old.coeffs != new.coeffs, axis=1)          # [stage, channel]
    for s, c in zip(*np.nonzero(changed)):
        b = new.coeffs[s, :3, c].astype(float) / COEFF_ONE
        a = 1.0 + (new.coeffs[s, A1, c] + new.coeffs[s, A2, c]) / COEFF_ONE
        y = int(st.hist[s, 2, c])
        bsum = b.sum()
        x_eq = 0 if (a == 0 or bsum == 0) else int(np.clip(round(y * a / bsum), INT32_MIN, INT32_MAX))
        st.hist[s, :, c] = (x_eq, x_eq, y, y)
        if st.mode[c] == MODE_RUN:
            st.active[s, :, c] = new.coeffs[s, :, c]


class Bank:
    """A bank ready to tick: holds config and state, swaps config between ticks."""

    def __init__(self, settings: BankSettings | None = None):
        self.settings = settings or BankSettings()
        self.config = self.settings.build()
        self.state = new_state(self.config)
        n = self.n_channels
        self._out = tuple(np.empty(n, np.int32) for _ in range(3))

    @property
    def n_channels(self) -> int:
        return self.config.coeffs.shape[2]

    def swap_config(self, settings: BankSettings) -> None:
        """Build the new config first (errors leave the old one running), then swap."""
        new = settings.build()
        if new.coeffs.shape != self.config.coeffs.shape:
            raise ValueError("a config swap cannot change the channel count")
        bumpless_rehistory(self.config, new, self.state)
        self.config, self.settings = new, settings

    def step(self, adc_i, adc_q):
        """One tick; returns (pzt_code, spool_code, aom_ftw) int32 arrays (reused)."""
        tick(self.config, self.state, adc_i, adc_q, *self._out)
        return self._out

    def read_faults(self):
        """(live, sticky) fault bits per channel; reading clears the sticky bits."""
        live = self.state.faults_live.copy()
        sticky = self.state.faults_sticky.copy()
        self.state.faults_sticky[:] = 0
        return live, sticky
