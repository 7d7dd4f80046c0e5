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

The servo cascade has S stages, S = the most sections any channel's servo
has (3 for `default_servo`, at most MAX_STAGES): coefficient, limit and
history arrays are [S, k, N]; a channel with fewer sections runs identity
stages after its last. `pad_stages` / `grow_stages` add identity stages to a
config / a state (what `Bank.swap_config` does when stage counts differ).
"""
from __future__ import annotations

import math
from collections import namedtuple
from dataclasses import dataclass, field, replace

import numpy as np
from numba import njit

from firmware import units
from firmware.atan2 import atan2_turns_scalar
from firmware.biquad import (biquad_step, biquad_step_at, biquad_stage, COEFF_ONE, HOLD_COEFFS,
                             IDENTITY_COEFFS, A1, A2)
from firmware.calibration import CAL_ROWS, CAL_STATUS_NAMES, aom_model_step
from firmware.channel_fsm import (MODE_RUN, MODE_HOLD, PASS2_BITS, SERIAL_UNREPORTED, EV_NONE,
                                  EV_LOSS, EV_LOSS_SAT, LAD_FIELDS, LADCH_FIELDS, LADINT_FIELDS,
                                  LADF_FIELDS, ladder_slow, servo_error)
from firmware.faults import LOCKED, PZT_SAT, SPOOL_SAT, STATE_NAMES, flag_names
from firmware.noise_shaper import shape_core, shape_step, notch_coefficients, PLAIN, FIRST_ORDER
from firmware.power import return_power
from firmware.servo_build import (ServoSettings, ZeroIntegratorSettings, NotchSettings,
                                  LowpassSettings, tustin, quantise, INT32_MAX, INT32_MIN)

# numba's on-disk cache keys a function on its own file's content only, and
# tick_batch links the ladder compiled from these files: their digest here
# makes an edit there recompile the tick (tests/test_fsm.py checks it).
LADDER_SOURCES_SHA1 = "4b1acb785dd0b6bb"   # sha1(channel_fsm.py + calibration.py)[:16]
# The same for the primitives inlined into the tick (tests/test_bank_speed.py checks it).
KERNEL_SOURCES_SHA1 = "a249cc8d1337def6"   # sha1(atan2 + power + biquad + noise_shaper .py)[:16]

MAX_STAGES = 4
MAX_CHANNELS = 256

ACT_PZT, ACT_AOM = 0, 1

PZT_DROP_BITS = 32 - units.PZT_DAC_BITS          # 12: int32 command -> 20-bit code
PZT_MID = 1 << (units.PZT_DAC_BITS - 1)
SPOOL_DROP_BITS = 32 - units.SPOOL_DAC_BITS      # 16
SPOOL_MID = 1 << (units.SPOOL_DAC_BITS - 1)
AOM_DROP_BITS = 8                                # servo output LSB = 1/256 DDS LSB
DDS_CLOCK_HZ = 1e9
AOM_RING = 8                                     # emitted tuning words kept (latency <= 6)

BankConfig = namedtuple("BankConfig", [
    # servo and actuators
    "coeffs", "limits", "hold_coeffs", "actuator",
    "ns_c1", "ns_c2", "aom_min", "aom_max",
    "off_coeffs", "off_limits", "off_shift",
    # per-channel thresholds the tick reads (machine units; BankSettings has the physics)
    "weak_power", "loss_window", "loss_ticks", "step_detect_codes", "adc_overrange",
    "pzt_sat_code", "spool_sat_code", "pzt_alarm",
    # bank-wide scalars the tick reads
    "state_machine", "trim_mask", "aom_kq16", "aom_latency", "aom_average", "err_shift",
    # the ladder's own settings, packed (rows named in firmware.channel_fsm:
    # LADCH_FIELDS per channel, LADINT_FIELDS and LADF_FIELDS bank-wide)
    "lad_ch", "lad_int", "lad_f",
    # stored one-way offsets of known blades, by serial
    "blade_serials", "blade_offsets_fs",
])

BankState = namedtuple("BankState", [
    # front end and servo
    "tick", "phase_last", "phase_acc", "setpoint", "hist", "active", "mode", "err", "step",
    "servo_y", "ns_err",
    "off_sum", "off_hist", "pzt_code", "spool_code", "aom_ftw",
    # the ladder (names of the first issue kept)
    "chan_state", "fsm_count", "faults_live", "faults_sticky",
    "slip_count", "relock_count", "power",
    "phase_now", "phase_free", "aom_ring", "aom_step", "pred", "vel", "aom_off", "aom_mod",
    "sub", "state_ticks", "blade_serial",
    # the ladder's other registers, the blade's calibration and the free-running
    # counters: int64[len(LAD_FIELDS), N], rows named in firmware.channel_fsm
    "lad",
    # the calibration's accumulators, int64[CAL_ROWS, N] (firmware.calibration)
    "cal",
    # host -> bank: 1 while a channel's sample is missing (no frame: COMM_TIMEOUT)
    "frame_missing",
    # scratch of pass 2: what the ladder still has to do for each channel
    "todo",
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
    or a tuple of per-channel values where noted. Refusals are ValueErrors
    naming the field. Times are rounded to whole ticks (at least one).

    Bank and servo:
    n_channels: 1..256, default 40.
    loop_rate_hz: tick rate, (0, 10 MHz], default 100 kHz.
    actuator: "pzt" (PZT + spool offload) or "aom" (DDS frequency). Default "pzt".
    servo: ServoSettings (unit_scale is set from the actuator), or a tuple of
        them per channel, each with 1..MAX_STAGES (4) sections; the bank runs
        as many stages as the longest has. Default: `default_servo` (3).
    offload: OffloadSettings.
    noise_shaper: "notch" (NTF zero at pzt_resonance_hz), "first", or "plain".
    pzt_resonance_hz: where the noise shaper puts its zero. Default 30 kHz.
    aom_range_hz: AOM servo and offset range +- Hz, > 0. Default 1 MHz.
    error_range_s: the servo input's range, +- one-way seconds, >= half a turn
        (1.29 fs). The error keeps full resolution (2**-32 turn) up to half a
        turn; a wider range drops one bit of resolution per doubling (the
        smallest power of two that covers it). A rack link's in-loop error is
        a few as; a long link's is set by its delay (~1.7 fs RMS on 100 km):
        give it 300 fs (8 bits, 1.5e-4 as steps). Default half a turn.

    Return power (I^2 + Q^2 in ADC codes^2; the nominal -20 dBm return is 16384^2):
    detect_power_codes2: a blade is seen above this; default 4096^2 (-12 dB).
    detect_time_s: debounce before EMPTY -> DETECTED. Default 1 ms.
    weak_power_codes2: below this a present blade's return is weak: WEAK_RETURN
        live (the loop runs on while the phase is trackable). (0, detect];
        default 2048^2 (-18 dB, 6 dB under detection).
    track_power_codes2: the phase is trusted down to here; below it the return
        counts as lost: HOLDOVER (and a calibration starts over). (0, weak];
        default 256^2 (-36 dB; the I/Q noise is ~1.1 codes per quadrature,
        7e-4 turn of phase noise at this level).
    adc_overrange_codes: |I| or |Q| at or above this: ADC_OVERRANGE, sample
        not used. Default 32767.

    Lock detector (errors as one-way delay at the blade):
    lock_window_s: |error| for lock, s, inside error_range_s. Default 0.5 fs.
    loss_window_s: |error| beyond which loss is counted, >= lock_window_s.
        Default 1 fs.
    lock_time_s: time inside the window (power and PZT headroom good) before
        LOCKED (slow). Default 2 ms.
    loss_time_s: time outside the loss window (or at the PZT threshold) before
        LOSS_OF_LOCK (fast), <= lock_time_s. Default 0.1 ms.
    pzt_sat_frac: |PZT code - mid| / half range at which PZT_SAT is live and
        the lock is lost, (0, 1]. Default 0.95.
    spool_sat_frac: the same for the spool: SPOOL_SAT. Default 0.95.
    pzt_alarm_frac: mean PZT command over an offload period beyond this
        fraction of its range while LOCKED: SPOOL_SAT (the offload does not
        keep the PZT centred: spool stuck, railed, or outrun). (0, 1]. Default 0.8.

    Steps and slips:
    max_slew_s_per_s: largest one-way delay rate a link can move, s/s. A tick
        whose phase step (AOM taken out) is larger is not used (HOLDOVER);
        the limit must stay under half a turn per tick. Default 30 ps/s
        (0.116 turn per tick at 100 kHz; rack50's 50 m link moves 3.3 ps/s RMS).
    step_detect_s: a LOCKED step of the round trip beyond this (one-way
        equivalent, s) raises NONRECIPROCITY: no reciprocal fibre moves that
        fast, so the blade's one-way time is suspect by up to the step. Default 0.1 fs.
    slip_fault_count: absolute cycles lost within slip_fault_window_s before
        FAULT ("repeated slips"), >= 1. Default 3.
    slip_fault_window_s: LOCKED this long clears the slip count. Default 1 s.
    step_recover_s: after a lock or a relock the loop's own pull-in steps are
        not step events for this long. Default 1 ms.

    Holdover:
    relock_confirm_s: consecutive good, mutually consistent samples before a
        return is acted on. Default 30 us.
    holdover_keep_cycle_s: longest holdover with the phase untracked (the
        return gone, confirmation included) after which the cycle is still
        claimed when the phase is continuous. A free-running 50 m rack50 link
        moves 0.12 turn RMS in 0.1 ms and 0.29 in 0.3 ms (docs/state_machine.md):
        a claim is wrong only if it moved more than 1 - continuity_window, 6
        sigma at 0.1 ms. Default 0.1 ms.
    continuity_window_turns: |returned phase - held phase - AOM motion| within
        which the cycle is kept, turns, (0, 0.5). Default 0.25.
    step_keep_turns: a step of a lit return (HOLDOVER entered on a step) is
        taken as that step, keeping the cycle, within this, turns, (0, 0.5);
        beyond it the cycle is declared lost (CYCLE_SLIP). Default 0.125.
    holdover_max_s: no return for this long: LOSS_OF_LOCK, then EMPTY (or
        FAULT when the board still reports the blade). Default 0.1 s.

    Calibration on insertion (firmware.calibration):
    calibrate: "auto" (blades the board reports by serial), "always", "never".
    blade_offsets: {serial: stored one-way offset of that blade, s}. Default {}.
    cal_time_s: modulation time, s (rounded to whole periods). Default 40 ms.
    cal_step_turns: (small, large) AOM phase advance per tick 2 df T, turns,
        each in (0, 0.49]. Default (0.1125, 0.45).
    cal_small_every: every k-th period uses the small step, >= 2. Default 8.
    cal_chip_s: ticks per chip as a time (None: one tick). Long links: more
        than tau_rt + a tick.
    cal_skip_s: leading part of every chip not used (long links: >= tau_rt + T). Default 0.
    cal_tolerance / cal_tolerance_s: accepted error of tau_rt: the larger of
        the relative and absolute figures. Defaults 1 %, 50 ps.
    cal_sigma: standard errors of the estimate that must fit inside the
        tolerance. Default 2.
    cal_agree_sigma: combined standard errors (plus the tolerance) by which
        the two step sizes may disagree. Default 4.
    cal_max_tau_rt_s: longest round trip accepted, s. Default 5 us (rack).
    park_time_s: time constant of the PZT's return to mid-range. Default 0.1 ms.
    settle_time_s: time in DETECTED before calibration (PZT settles). Default 0.3 ms.
    aom_clock_hz: DDS clock (df = ftw clock / 2^32). Default 1 GHz.
    aom_latency_ticks: ticks from emitting a tuning word to the sample it
        shows in (the rig: one of computation, one of integrate-and-dump), 1..6. Default 2.
    aom_frontend_average: the front end averages over the tick (True) or
        samples at its end (False). Default True.

    Acquisition:
    pullin_hz: a beat (round-trip turns/s) beyond this is taken out by the
        AOM before the loop closes. Default 2 kHz.
    acq_freq_window_s: beat measurement window after a loss. Default 1 ms.
    acq_max_tries: frequency corrections before FAULT. Default 3.
    gain_ramp_s: the error ramps from 0 to full over this after closing. Default 0.1 ms.
    acq_timeout_s: ACQUIRING longer than this: FAULT. Default 50 ms.
    freq_trim_hz: in lock, a beat the PZT and spool carry beyond this is moved
        to the AOM. Default 100 Hz (the spool offload sustains ~120 Hz).
    freq_trim_window_s: its averaging window (rounded to 2^k ticks). Default 0.16 s.

    Faults:
    sat_fault_count: saturation losses in a row before FAULT. Default 3.
    fault_retry_s: first back-off in FAULT; doubles per fault up to
        fault_retry_max_s. Defaults 10 ms, 1 s.
    state_machine: False skips the ladder (every channel keeps its state and
        mode; for benchmarks of the bare tick). Default True.
    """
    n_channels: int = 40
    loop_rate_hz: float = 100e3
    actuator: str = "pzt"
    servo: object = None
    offload: OffloadSettings = field(default_factory=OffloadSettings)
    noise_shaper: str = "notch"
    pzt_resonance_hz: float = 30e3
    aom_range_hz: float = 1e6
    error_range_s: float = units.ONEWAY_S_PER_TURN / 2
    detect_power_codes2: float = 4096.0 ** 2
    detect_time_s: float = 1e-3
    weak_power_codes2: float = 2048.0 ** 2
    track_power_codes2: float = 256.0 ** 2
    adc_overrange_codes: int = 32767
    lock_window_s: float = 0.5e-15
    loss_window_s: float = 1.0e-15
    lock_time_s: float = 2e-3
    loss_time_s: float = 0.1e-3
    pzt_sat_frac: float = 0.95
    spool_sat_frac: float = 0.95
    pzt_alarm_frac: float = 0.8
    max_slew_s_per_s: float = 30e-12
    step_detect_s: float = 0.1e-15
    slip_fault_count: int = 3
    slip_fault_window_s: float = 1.0
    step_recover_s: float = 1e-3
    relock_confirm_s: float = 30e-6
    holdover_keep_cycle_s: float = 0.1e-3
    continuity_window_turns: float = 0.25
    step_keep_turns: float = 0.125
    holdover_max_s: float = 0.1
    calibrate: str = "auto"
    blade_offsets: dict = field(default_factory=dict)
    cal_time_s: float = 40e-3
    cal_step_turns: tuple = (0.1125, 0.45)
    cal_small_every: int = 8
    cal_chip_s: float | None = None
    cal_skip_s: float = 0.0
    cal_tolerance: float = 0.01
    cal_tolerance_s: float = 50e-12
    cal_sigma: float = 2.0
    cal_agree_sigma: float = 4.0
    cal_max_tau_rt_s: float = 5e-6
    park_time_s: float = 0.1e-3
    settle_time_s: float = 0.3e-3
    aom_clock_hz: float = 1e9
    aom_latency_ticks: int = 2
    aom_frontend_average: bool = True
    pullin_hz: float = 2e3
    acq_freq_window_s: float = 1e-3
    acq_max_tries: int = 3
    gain_ramp_s: float = 0.1e-3
    acq_timeout_s: float = 50e-3
    freq_trim_hz: float = 100.0
    freq_trim_window_s: float = 0.16
    sat_fault_count: int = 3
    fault_retry_s: float = 10e-3
    fault_retry_max_s: float = 1.0
    state_machine: bool = True

    def __hash__(self):                      # blade_offsets is a dict
        return hash(tuple((f, repr(getattr(self, f))) for f in self.__dataclass_fields__))

    def build(self) -> BankConfig:
        n = self.n_channels
        if not (isinstance(n, (int, np.integer)) and not isinstance(n, bool)
                and 1 <= n <= MAX_CHANNELS):
            raise ValueError(f"n_channels must be an integer in 1..{MAX_CHANNELS}, got {n!r}")
        rate = self.loop_rate_hz
        if not (isinstance(rate, (int, float)) and math.isfinite(rate) and 0 < rate <= 10e6):
            raise ValueError(f"loop_rate_hz must be in (0, 10 MHz], got {rate!r}")
        if self.actuator not in ("pzt", "aom"):
            raise ValueError(f"actuator must be 'pzt' or 'aom', got {self.actuator!r}")
        kind = ACT_PZT if self.actuator == "pzt" else ACT_AOM
        positive = ("detect_power_codes2", "detect_time_s", "weak_power_codes2", "track_power_codes2",
                    "lock_window_s", "loss_window_s", "lock_time_s", "loss_time_s",
                    "max_slew_s_per_s", "step_detect_s", "aom_range_hz", "slip_fault_window_s",
                    "step_recover_s",
                    "relock_confirm_s", "holdover_keep_cycle_s", "continuity_window_turns",
                    "step_keep_turns", "holdover_max_s", "cal_time_s", "cal_tolerance",
                    "cal_tolerance_s", "cal_sigma", "cal_agree_sigma",
                    "cal_max_tau_rt_s", "park_time_s", "settle_time_s", "aom_clock_hz", "pullin_hz",
                    "acq_freq_window_s", "gain_ramp_s", "acq_timeout_s", "freq_trim_hz",
                    "freq_trim_window_s", "fault_retry_s", "fault_retry_max_s",
                    "pzt_sat_frac", "spool_sat_frac", "pzt_alarm_frac", "error_range_s")
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be finite and > 0, got {v!r}")
        for name in ("pzt_sat_frac", "spool_sat_frac", "pzt_alarm_frac"):
            if getattr(self, name) > 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)!r}")
        if not self.weak_power_codes2 <= self.detect_power_codes2:
            raise ValueError("weak_power_codes2 must be <= detect_power_codes2 (hysteresis)")
        if not self.track_power_codes2 <= self.weak_power_codes2:
            raise ValueError("track_power_codes2 must be <= weak_power_codes2")
        for name in ("continuity_window_turns", "step_keep_turns"):
            if not getattr(self, name) < 0.5:
                raise ValueError(f"{name} must be below half a turn")
        if self.loss_window_s < self.lock_window_s:
            raise ValueError("loss_window_s must be >= lock_window_s (hysteresis)")
        if self.fault_retry_max_s < self.fault_retry_s:
            raise ValueError("fault_retry_max_s must be >= fault_retry_s")
        for name, lo, hi in (("slip_fault_count", 1, 1000), ("sat_fault_count", 1, 1000),
                             ("acq_max_tries", 1, 100), ("cal_small_every", 2, 64),
                             ("aom_latency_ticks", 1, 6)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
                raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {v!r}")
        if self.calibrate not in ("auto", "always", "never"):
            raise ValueError(f"calibrate must be 'auto', 'always' or 'never', got {self.calibrate!r}")
        steps = tuple(self.cal_step_turns) if isinstance(self.cal_step_turns, (tuple, list)) else ()
        if len(steps) != 2 or not all(isinstance(x, (int, float)) and math.isfinite(x) and 0 < x <= 0.49
                                      for x in steps) or not steps[0] < steps[1]:
            raise ValueError(f"cal_step_turns must be (small, large) with 0 < small < large <= 0.49, "
                             f"got {self.cal_step_turns!r}")
        if not isinstance(self.blade_offsets, dict):
            raise ValueError("blade_offsets must be a dict {serial: one-way offset s}")

        half_turn_s = units.ONEWAY_S_PER_TURN / 2
        if not self.error_range_s >= half_turn_s * (1 - 1e-9):
            raise ValueError(f"error_range_s must be >= half a turn ({half_turn_s:.4g} s), "
                             f"got {self.error_range_s!r}")
        # error LSB = 2**err_shift phase codes: the smallest shift whose int32 covers the range
        err_shift = max(0, math.ceil(math.log2(self.error_range_s / half_turn_s) - 1e-9))
        if err_shift > 24:
            raise ValueError(f"error_range_s {self.error_range_s!r} is beyond 2**24 half turns")
        servos = self.servo if isinstance(self.servo, tuple) else (self.servo,) * n
        if len(servos) != n:
            raise ValueError(f"{len(servos)} servo settings for {n} channels")
        if kind == ACT_PZT:
            scale = units.ONEWAY_S_PER_PHASE_CODE / pzt_unit_s(self.offload.pzt_range_s)
        else:
            # dtau/dt = delta_f / nu: a controller in 1/s gives Hz = nu * C * error_s.
            scale = units.ONEWAY_S_PER_PHASE_CODE * units.OPTICAL_FREQ_HZ / aom_unit_hz()
        scale *= 2.0 ** err_shift
        servos = [replace(default_servo(rate, self.offload.pzt_range_s) if s is None else s,
                          loop_rate_hz=rate, unit_scale=scale) for s in servos]
        if kind == ACT_AOM:
            lim = min(int(self.aom_range_hz / aom_unit_hz()), INT32_MAX)
            servos = [replace(s, out_min=-lim, out_max=lim) for s in servos]
        # The tick runs as many stages as the longest servo has sections (the
        # default: 3); a shorter servo's extra stages are identities.
        n_stages = max(1, max(len(s.sections) for s in servos))
        if n_stages > MAX_STAGES:
            raise ValueError(f"a servo has {n_stages} sections, at most {MAX_STAGES}")
        coeffs = np.empty((n_stages, 5, n), np.int32)        # stage-major: channel contiguous
        limits = np.empty((n_stages, 2, n), np.int32)
        cache = {}
        for c, s in enumerate(servos):
            if s not in cache:
                cache[s] = s.build(n_stages)
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
        T = 1.0 / rate
        ticks = lambda t: max(1, int(round(t * rate)))
        codes_per_s = 1.0 / units.ONEWAY_S_PER_PHASE_CODE
        turn = float(units.TURN)
        err_lsb = 2.0 ** err_shift                                  # phase codes per error LSB
        window = self.lock_window_s * codes_per_s / err_lsb
        if window >= units.HALF_TURN:
            raise ValueError(f"lock_window_s {self.lock_window_s} is outside error_range_s")
        loss_window = self.loss_window_s * codes_per_s / err_lsb
        if loss_window >= units.HALF_TURN:
            # the input saturates at the range: a window beyond it is never crossed
            raise ValueError(f"loss_window_s {self.loss_window_s} is outside error_range_s "
                             f"{self.error_range_s}: widen error_range_s")
        if self.lock_time_s < self.loss_time_s:
            raise ValueError("lock_time_s must be >= loss_time_s (slow to lock, fast to lose)")
        max_step = min(self.max_slew_s_per_s / rate * codes_per_s, float(INT32_MAX))
        step_detect = min(self.step_detect_s * codes_per_s, float(INT32_MAX))

        # the AOM model: 2 f_clk T round-trip codes per tuning-word LSB per tick, Q16
        kq = self.aom_clock_hz * T
        ftw_per_hz = 2.0 ** 32 / self.aom_clock_hz
        aom_lim = min(int(self.aom_range_hz / aom_unit_hz()) >> AOM_DROP_BITS, INT32_MAX)
        # The model (firmware.calibration.aom_codes) keeps f_clk T in whole
        # codes times a sum of two tuning words under 2**62: f_clk T < 2**30.
        if not kq < 2 ** 30:
            raise ValueError(f"aom_clock_hz / loop_rate_hz = {kq:g} must be below 2**30: "
                             f"raise the loop rate or lower the DDS clock")
        a_small, a_large = (int(round(x / (2 * T) * ftw_per_hz)) for x in steps)
        if a_small < 1 or a_large > aom_lim:
            raise ValueError(f"cal_step_turns {steps} give tuning words {a_small}, {a_large} outside "
                             f"1..{aom_lim} (aom_range_hz)")
        chip = 1 if self.cal_chip_s is None else ticks(self.cal_chip_s)
        skip = int(round(self.cal_skip_s * rate))
        if not 0 <= skip < chip:
            raise ValueError(f"cal_skip_s must leave part of every chip: skip {skip} of {chip} ticks")
        periods = max(2 * self.cal_small_every, int(round(self.cal_time_s * rate / (8 * chip))))
        if periods > 8 * 2048:
            raise ValueError(f"cal_time_s {self.cal_time_s} gives {periods} periods (at most 16384)")
        trim_log2 = max(1, min(30, int(round(math.log2(self.freq_trim_window_s * rate)))))
        park_shift = max(1, min(20, int(round(math.log2(max(1.0, self.park_time_s * rate))))))
        retry = ticks(self.fault_retry_s)
        retry_max_exp = max(0, int(math.floor(math.log2(self.fault_retry_max_s / self.fault_retry_s))))

        serials = [int(k) & 0xFFFF_FFFF_FFFF_FFFF for k in self.blade_offsets] or [0]
        offsets = [self.blade_offsets[k] for k in self.blade_offsets] or [0.0]
        for k, v in zip(serials, offsets):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and abs(v) < 1.0):
                raise ValueError(f"blade_offsets[{k}] = {v!r} must be a finite offset in seconds")
        full = lambda v, dt: np.full(n, v, dt)
        packed_ch = dict(
            detect_power=full(int(self.detect_power_codes2), np.int64),
            track_power=full(int(self.track_power_codes2), np.int64),
            detect_ticks=full(ticks(self.detect_time_s), np.int32),
            lock_window=full(int(window), np.int64),
            lock_ticks=full(ticks(self.lock_time_s), np.int32),
            max_step_codes=full(int(max_step), np.int64),
        )
        packed_int = dict(
            pzt_mid=np.int64(PZT_MID),
            pzt_to_spool_q16=np.int64(round(self.offload.pzt_range_s / self.offload.spool_range_s
                                            * 65536)),
            pzt_codes_q16=np.int64(round(pzt_unit_s(self.offload.pzt_range_s)
                                         / units.ONEWAY_S_PER_PHASE_CODE
                                         * 65536)),
            park_shift=np.int64(park_shift),
            settle_ticks=np.int64(ticks(self.settle_time_s)),
            confirm_ticks=np.int64(ticks(self.relock_confirm_s)),
            recover_ticks=np.int64(ticks(self.step_recover_s)),
            keep_cycle_ticks=np.int64(ticks(self.holdover_keep_cycle_s)),
            cont_window_codes=np.int64(self.continuity_window_turns * turn),
            step_keep_codes=np.int64(self.step_keep_turns * turn),
            holdover_max_ticks=np.int64(ticks(self.holdover_max_s)),
            slip_fault_count=np.int64(self.slip_fault_count),
            slip_window_ticks=np.int64(min(ticks(self.slip_fault_window_s), 1 << 30)),
            sat_fault_count=np.int64(self.sat_fault_count),
            retry_ticks=np.int64(retry),
            retry_max_exp=np.int64(min(retry_max_exp, 30)),
            cal_mode=np.int64({"never": 0, "auto": 1, "always": 2}[self.calibrate]),
            cal_chip=np.int64(chip),
            cal_skip=np.int64(skip),
            cal_periods=np.int64(periods),
            cal_small_every=np.int64(self.cal_small_every),
            cal_a_small=np.int64(a_small),
            cal_a_large=np.int64(a_large),
            pullin_codes=np.int64(self.pullin_hz / rate * turn),
            acq_freq_ticks=np.int64(ticks(self.acq_freq_window_s)),
            acq_max_tries=np.int64(self.acq_max_tries),
            ramp_ticks=np.int64(ticks(self.gain_ramp_s)),
            acq_timeout_ticks=np.int64(ticks(self.acq_timeout_s)),
            trim_codes=np.int64(self.freq_trim_hz / rate * turn),
            trim_log2=np.int64(trim_log2),
        )
        packed_f = dict(
            tick_s=float(T),
            aom_clock_hz=float(self.aom_clock_hz),
            cal_tol_rel=float(self.cal_tolerance),
            cal_tol_abs_s=float(self.cal_tolerance_s),
            cal_max_tau_rt_s=float(self.cal_max_tau_rt_s),
            cal_k_sigma=float(self.cal_sigma),
            cal_k_agree=float(self.cal_agree_sigma),
        )
        return BankConfig(
            coeffs=coeffs,
            limits=limits,
            hold_coeffs=HOLD_COEFFS.copy(),
            actuator=full(kind, np.uint8),
            ns_c1=full(c1, np.int32),
            ns_c2=full(c2, np.int32),
            aom_min=full(-aom_lim, np.int32),
            aom_max=full(aom_lim, np.int32),
            off_coeffs=np.tile(off, (n, 1)),
            off_limits=np.tile(np.array([INT32_MIN, INT32_MAX], np.int32), (n, 1)),
            off_shift=np.int64(self.offload.decimation_log2),
            weak_power=full(int(self.weak_power_codes2), np.int64),
            loss_window=full(int(loss_window), np.int64),
            loss_ticks=full(ticks(self.loss_time_s), np.int32),
            step_detect_codes=full(int(step_detect), np.int64),
            adc_overrange=full(int(self.adc_overrange_codes), np.int32),
            pzt_sat_code=full(max(1, int(self.pzt_sat_frac * PZT_MID)), np.int64),
            spool_sat_code=full(max(1, int(self.spool_sat_frac * SPOOL_MID)), np.int64),
            state_machine=bool(self.state_machine),
            pzt_alarm=np.int64(self.pzt_alarm_frac * 2.0 ** 31),
            aom_kq16=np.int64(round(kq * 65536)),
            aom_latency=np.int64(self.aom_latency_ticks),
            aom_average=bool(self.aom_frontend_average),
            err_shift=np.int64(err_shift),
            trim_mask=np.int64((1 << trim_log2) - 1),
            blade_serials=np.array(serials, np.uint64),
            blade_offsets_fs=np.array([int(round(v * 1e15)) for v in offsets], np.int64),
            lad_ch=np.stack([np.asarray(packed_ch[f], np.int64) for f in LADCH_FIELDS]),
            lad_int=np.array([int(packed_int[f]) for f in LADINT_FIELDS], np.int64),
            lad_f=np.array([float(packed_f[f]) for f in LADF_FIELDS], np.float64),
        )


def new_state(cfg: BankConfig) -> BankState:
    n = cfg.coeffs.shape[2]
    z = lambda dt, *shape: np.zeros((n,) + shape, dt)
    active = np.empty_like(cfg.coeffs)
    active[:] = cfg.hold_coeffs[None, :, None]                  # parked until a blade is seen
    return BankState(
        tick=np.zeros(1, np.int64), phase_last=z(np.int32), phase_acc=z(np.int64),
        setpoint=z(np.int64), hist=np.zeros((cfg.coeffs.shape[0], 4, n), np.int32), active=active,
        mode=z(np.uint8), err=z(np.int32), step=z(np.int32), servo_y=z(np.int32),
        ns_err=z(np.int32, 2), off_sum=z(np.int64), off_hist=z(np.int32, 4),
        pzt_code=np.full(n, PZT_MID, np.int32), spool_code=np.full(n, SPOOL_MID, np.int32),
        aom_ftw=z(np.int32), chan_state=z(np.uint8), fsm_count=z(np.int32),
        faults_live=z(np.uint32), faults_sticky=z(np.uint32),
        slip_count=z(np.int64), relock_count=z(np.int64), power=z(np.int64),
        phase_now=z(np.int32), phase_free=z(np.int64),
        aom_ring=np.zeros((AOM_RING, n), np.int32), aom_step=z(np.int64), pred=z(np.int64),
        vel=z(np.int64), aom_off=z(np.int32), aom_mod=z(np.int32), sub=z(np.uint8),
        state_ticks=z(np.int32), blade_serial=z(np.uint64),
        lad=np.zeros((len(LAD_FIELDS), n), np.int64), cal=np.zeros((CAL_ROWS, n), np.int64),
        frame_missing=z(np.uint8), todo=z(np.uint8),
    )


@njit(cache=True)
def tick_batch(cfg, st, adc_i, adc_q, pzt_out, spool_out, aom_out, blade_serial=None):
    """T ticks of the whole bank: ADC frames in, actuator frames out (in place).

    adc_i, adc_q: int16[T, N]; pzt_out, spool_out, aom_out: int32[T, N]; row t
    is tick t. blade_serial: uint64[T, N], the blade serial the board reports
    per channel (0: no blade), or None when the board reports none (the
    ladder then goes by return power alone). `tick` is this with T = 1.

    Each tick is five passes over the channels: the phase front end
    (branch-free), the state ladder (a few compares for a steady LOCKED
    channel; `ladder_slow` for every other case), the biquad cascade stage
    by stage (uniform: HOLD/PARK are coefficient sets, not branches; as many
    stages as the config has, i.e. as its longest servo has sections), the
    actuators, and the decimated spool offload.

    Speed (tools/bench/tick.py: 40 locked channels, 2000 ticks per call,
    AVX2): ~14 ns per channel-update (~70 M/s), from 36.5 ns with one
    loop per pass. Every hot pass is split into short, branch-free loops over
    unit-stride 1-D arrays: LLVM vectorises a loop only when it can rule out
    that a store in one iteration overlaps a load in another, which it
    cannot for rows of one 2-D or 3-D array at a run-time row length (a
    distance it does not know), and the same work in one long loop over many
    arrays measured slower than split. So the cascade works on per-stage row views
    (`biquad_stage`, 4 channels per vpmuldq: 0.9 ns per channel and stage
    against 3.5 scalar), the noise shaper on the flat error histories, the
    ring and the AOM model step in loops of their own, the steady-lock
    ladder in three loops (without per-channel selects when every channel
    is steady), atan2 alone in one. A PZT bank (every bank
    `build` makes is all PZT or all AOM) takes the split actuator loops; a
    config mixing actuators per channel takes the general one. tests/
    test_bank_speed.py checks all of it against the plain one-loop-per-pass
    tick. Namedtuple fields are unpacked once per call: each unpacking
    costs reference counting (~0.8 us per call in all, which a one-tick
    call pays every tick).
    """
    n = adc_i.shape[1]
    phase_last, phase_acc, setpoint, err, steps = (st.phase_last, st.phase_acc, st.setpoint,
                                                   st.err, st.step)
    power, live, sticky, phase_now, phase_free = (st.power, st.faults_live, st.faults_sticky,
                                                  st.phase_now, st.phase_free)
    chan_state, fsm_count, state_ticks, bserial = (st.chan_state, st.fsm_count, st.state_ticks,
                                                   st.blade_serial)
    aom_step, aom_ring, aom_off, aom_mod, missing = (st.aom_step, st.aom_ring, st.aom_off,
                                                     st.aom_mod, st.frame_missing)
    pred, vel, mode, todo = st.pred, st.vel, st.mode, st.todo
    weak_power, step_detect, overrange = cfg.weak_power, cfg.step_detect_codes, cfg.adc_overrange
    loss_window, loss_ticks, pzt_sat_code = cfg.loss_window, cfg.loss_ticks, cfg.pzt_sat_code
    ladder_on, trim_mask = cfg.state_machine, cfg.trim_mask
    lat, kq16, averaged, err_shift = cfg.aom_latency, cfg.aom_kq16, cfg.aom_average, cfg.err_shift
    coeffs, hold, active, hist, limits, servo_y = (cfg.coeffs, cfg.hold_coeffs, st.active,
                                                   st.hist, cfg.limits, st.servo_y)
    pzt_code, spool_code, aom_ftw, ns_err = st.pzt_code, st.spool_code, st.aom_ftw, st.ns_err
    ns_c1, ns_c2, actuator, off_sum = cfg.ns_c1, cfg.ns_c2, cfg.actuator, st.off_sum
    aom_min, aom_max, off_shift, tick_count = cfg.aom_min, cfg.aom_max, cfg.off_shift, st.tick
    n_stages = active.shape[0]
    last = n_stages - 1
    pass2 = PASS2_BITS
    # per-stage views made once per call (stages past the last alias it, unused)
    act0, hist0, lim0 = active[0], hist[0], limits[0]
    act1, hist1, lim1 = active[min(1, last)], hist[min(1, last)], limits[min(1, last)]
    act2, hist2, lim2 = active[min(2, last)], hist[min(2, last)], limits[min(2, last)]
    act3, hist3, lim3 = active[min(3, last)], hist[min(3, last)], limits[min(3, last)]
    ns_flat = ns_err.reshape(-1)                  # [2 N]: row c at 2c, 2c + 1
    all_pzt = True
    for c in range(n):
        all_pzt = all_pzt & (actuator[c] == ACT_PZT)
    # a missing frame (Bank.step_missing, one tick) sends every channel of the
    # call through the slow path: one scan here, no per-channel load in 2a
    any_missing = False
    for c in range(n):
        any_missing = any_missing | (missing[c] != 0)
    for t in range(adc_i.shape[0]):
        k = tick_count[0]
        # 1. phase front end: power, atan2 (int32 turns), and the deviation of the
        # phase step from its prediction, wrapped: 0 for a closed loop; the AOM's
        # known motion plus the free-running velocity for an open one, so the
        # unwrapper follows AOM steps and detuned beats of up to half a turn
        # per tick exactly. atan2 in a loop of its own (vectorised, the bulk of
        # the pass); the rest in a second loop over the channels.
        for c in range(n):
            phase_now[c] = atan2_turns_scalar(np.int32(adc_q[t, c]), np.int32(adc_i[t, c]))
        for c in range(n):
            i = np.int32(adc_i[t, c])
            q = np.int32(adc_q[t, c])
            power[c] = return_power(i, q)
            d = np.int64(phase_now[c]) - np.int64(phase_last[c]) - pred[c]
            steps[c] = np.int32(((d + 0x80000000) & 0xFFFFFFFF) - 0x80000000)
            todo[c] = np.uint8(4) if max(abs(i), abs(q)) >= overrange[c] else np.uint8(0)
        # 2. state ladder: commits or rejects each sample, sets the servo input.
        # 2a, for every channel, branch-free (it vectorises): the steady-lock
        # case (LOCKED, return good, ADC in range, step inside step_detect, the
        # same blade, no frame missing): commit the sample, form the error,
        # count toward loss. Everything else is marked for 2b.
        # 2b: the marked channels through ladder_slow, one by one.
        if ladder_on:
            slow_tick = ((k & trim_mask) == 0) | any_missing
            # 2a in short loops over few arrays each (one loop over all of
            # them is too many possible overlaps for LLVM to vectorise):
            # which channels take the steady path (todo bit 0 clear), ...
            nok = np.uint8(0)                           # OR of the marks: 0 if all steady
            for c in range(n):
                over = todo[c] != 0                     # ADC over range (pass 1)
                ok = (chan_state[c] == LOCKED) & (power[c] >= weak_power[c]) & (not over) & \
                    (abs(np.int64(steps[c])) <= step_detect[c]) & (not slow_tick)
                td = (np.uint8(4) if over else np.uint8(0)) | (np.uint8(0) if ok else np.uint8(1))
                todo[c] = td
                nok |= td
            if blade_serial is not None:
                for c in range(n):
                    b_in = blade_serial[t, c]
                    same = (b_in == bserial[c]) | (b_in == SERIAL_UNREPORTED)
                    td = todo[c] | (np.uint8(0) if same else np.uint8(1))
                    todo[c] = td
                    nok |= td
            # ... their samples committed, their servo input formed and loss of
            # lock counted; `marked` ORs what 2b has to do. Every channel steady
            # (the common case): the same without the per-channel selects.
            marked = np.uint8(0)
            if nok == 0:
                for c in range(n):
                    dev = np.int64(steps[c])
                    phase_acc[c] += dev
                    phase_free[c] += dev - aom_step[c]
                    phase_last[c] = phase_now[c]
                for c in range(n):
                    e = servo_error(setpoint[c], phase_acc[c], err_shift)
                    rail = (live[c] & np.uint32(PZT_SAT)) != 0
                    f = fsm_count[c] + 1 if ((abs(np.int64(e)) > loss_window[c]) | rail) else np.int32(0)
                    err[c] = e
                    fsm_count[c] = f
                    live[c] &= ~pass2
                    td = np.uint8(0) if f < loss_ticks[c] else (np.uint8(3) if rail else np.uint8(2))
                    todo[c] = td
                    marked |= td
            else:
                for c in range(n):
                    ok = (todo[c] & 1) == 0
                    dev = np.int64(steps[c])
                    phase_acc[c] += dev if ok else np.int64(0)
                    phase_free[c] += (dev - aom_step[c]) if ok else np.int64(0)
                    phase_last[c] = phase_now[c] if ok else phase_last[c]
                for c in range(n):
                    td = todo[c]
                    ok = (td & 1) == 0
                    e = servo_error(setpoint[c], phase_acc[c], err_shift)
                    rail = (live[c] & np.uint32(PZT_SAT)) != 0
                    f0 = fsm_count[c]
                    f = f0 + 1 if ((abs(np.int64(e)) > loss_window[c]) | rail) else np.int32(0)
                    err[c] = e if ok else err[c]
                    fsm_count[c] = f if ok else f0
                    live[c] = (live[c] & ~pass2) if ok else live[c]
                    lost = f >= loss_ticks[c]
                    td |= np.uint8(0) if not (ok and lost) else (np.uint8(3) if rail else np.uint8(2))
                    todo[c] = td
                    marked |= td
            # 2b only where a channel is marked: the branchy scan runs only then
            for c in range(n if (marked & 3) != 0 else 0):
                td = todo[c]
                if (td & 3) != 0:
                    if blade_serial is None:
                        ser = SERIAL_UNREPORTED
                    else:
                        ser = blade_serial[t, c]
                    ev = td & 3
                    bits = ladder_slow(cfg, st, c, k, ser, (td & 4) != 0,
                                       ev == 1 and missing[c] != 0,
                                       EV_NONE if ev == 1 else (EV_LOSS if ev == 2 else EV_LOSS_SAT))
                    live[c] = (live[c] & ~pass2) | bits
                    sticky[c] |= bits
        else:
            for c in range(n):
                raw = np.int64(steps[c]) + pred[c]
                acc = phase_acc[c] + raw
                phase_acc[c] = acc
                phase_free[c] += raw - aom_step[c]
                phase_last[c] = phase_now[c]
                err[c] = servo_error(setpoint[c], acc, err_shift)
        # 3. servo cascade, stage by stage, each stage one vectorised loop over
        # the channels (biquad_stage); the first reads the error itself
        biquad_stage(act0, hist0, lim0, err, servo_y, n)
        if n_stages > 1:
            biquad_stage(act1, hist1, lim1, servo_y, servo_y, n)
        if n_stages > 2:
            biquad_stage(act2, hist2, lim2, servo_y, servo_y, n)
        if n_stages > 3:
            biquad_stage(act3, hist3, lim3, servo_y, servo_y, n)
        for sg in range(4, n_stages):             # only a hand-made config has more
            for c in range(n):
                servo_y[c] = biquad_step_at(active, hist, limits, sg, c, servo_y[c])
        # 4. actuators; the AOM word emitted now is applied `lat` ticks on: keep
        # it in the ring and precompute the model step of the next sample
        slot = k & (AOM_RING - 1)
        nxt = (k + 1 - lat) & (AOM_RING - 1)
        prv = (k - lat) & (AOM_RING - 1)
        if all_pzt:
            # a PZT bank (every bank `build` makes is all PZT or all AOM): the
            # same steps as the general loop below, split into short
            # branch-free loops over few arrays each, which vectorise
            for c in range(n):
                # shape_step, on the flat error histories (constant stride 2:
                # the loop vectorises, where the 2-D index keeps it scalar)
                e1 = ns_flat[2 * c]
                code, e0 = shape_core(servo_y[c], PZT_DROP_BITS, ns_c1[c], ns_c2[c], e1,
                                      ns_flat[2 * c + 1], -PZT_MID, PZT_MID - 1)
                ns_flat[2 * c + 1] = e1
                ns_flat[2 * c] = np.int32(e0)
                pzt_code[c] = np.int32(code + PZT_MID)
                pzt_out[t, c] = np.int32(code + PZT_MID)
            for c in range(n):
                sat = abs(np.int64(pzt_code[c]) - PZT_MID) >= pzt_sat_code[c]
                bit = np.uint32(PZT_SAT) if sat else np.uint32(0)
                live[c] = (live[c] & ~np.uint32(PZT_SAT)) | bit
                sticky[c] |= bit
            for c in range(n):
                off_sum[c] += np.int64(servo_y[c]) if chan_state[c] == LOCKED else np.int64(0)
            for c in range(n):
                a = min(max(np.int64(aom_off[c]) + np.int64(aom_mod[c]), np.int64(aom_min[c])),
                        np.int64(aom_max[c]))
                aom_ftw[c] = np.int32(a)
                aom_out[t, c] = np.int32(a)
        else:
            for c in range(n):
                y = servo_y[c]
                a = np.int64(aom_off[c]) + np.int64(aom_mod[c])
                if actuator[c] == ACT_PZT:
                    code = shape_step(y, PZT_DROP_BITS, ns_c1[c], ns_c2[c], ns_err, c,
                                      -PZT_MID, PZT_MID - 1)
                    pzt_code[c] = code + PZT_MID
                    sat = abs(np.int64(code)) >= pzt_sat_code[c]
                    live[c] = (live[c] & ~np.uint32(PZT_SAT)) | \
                        (np.uint32(PZT_SAT) if sat else np.uint32(0))
                    if sat:
                        sticky[c] |= np.uint32(PZT_SAT)
                    if chan_state[c] == LOCKED:
                        off_sum[c] += y
                else:
                    a += shape_step(y, AOM_DROP_BITS, 0, 0, ns_err, c, aom_min[c], aom_max[c])
                a = min(max(a, np.int64(aom_min[c])), np.int64(aom_max[c]))
                aom_ftw[c] = np.int32(a)
                pzt_out[t, c] = pzt_code[c]
                aom_out[t, c] = np.int32(a)
        # the ring and the model step in loops of their own: a store to one
        # ring row and a load of another in one loop would keep it scalar
        ring = aom_ring[slot]
        for c in range(n):
            ring[c] = aom_ftw[c]
        ring_nxt = aom_ring[nxt]
        ring_prv = aom_ring[prv]
        for c in range(n):
            m = aom_model_step(ring_nxt[c], ring_prv[c], kq16, averaged)
            aom_step[c] = m
            pred[c] = 0 if mode[c] == MODE_RUN else m + vel[c]
        # 5. the spool offload, decimated: every 2**off_shift ticks on the mean PZT command
        if (k & ((np.int64(1) << off_shift) - 1)) == 0:
            _offload(cfg, st)
        for c in range(n):
            spool_out[t, c] = spool_code[c]
        tick_count[0] = k + 1


@njit(cache=True)
def _offload(cfg, st):
    """PZT -> spool: the mean PZT command through the offload section -> 16-bit
    spool code. SPOOL_SAT: the spool code at its threshold, or (LOCKED) the
    mean PZT command beyond the alarm fraction: the spool is not taking the
    drift (stuck, railed or outrun)."""
    for c in range(st.off_sum.shape[0]):
        if cfg.actuator[c] != ACT_PZT:
            continue
        xo = np.int32(st.off_sum[c] >> cfg.off_shift)
        st.off_sum[c] = 0
        lo = cfg.off_limits[c, 0]
        hi = cfg.off_limits[c, 1]
        yo = biquad_step(cfg.off_coeffs[c], st.off_hist[c], lo, hi, xo)
        sc = (np.int64(yo) + (1 << (SPOOL_DROP_BITS - 1))) >> SPOOL_DROP_BITS
        sc = min(max(sc, -SPOOL_MID), SPOOL_MID - 1)
        st.spool_code[c] = np.int32(sc + SPOOL_MID)
        sat = (yo <= lo) | (yo >= hi) | (abs(sc) >= cfg.spool_sat_code[c])
        if st.chan_state[c] == LOCKED and abs(np.int64(xo)) >= cfg.pzt_alarm:
            sat = True
        st.faults_live[c] = (st.faults_live[c] & ~np.uint32(SPOOL_SAT)) | \
            (np.uint32(SPOOL_SAT) if sat else np.uint32(0))
        if sat:
            st.faults_sticky[c] |= np.uint32(SPOOL_SAT)


@njit(cache=True)
def tick(cfg, st, adc_i, adc_q, pzt_out, spool_out, aom_out, blade_serial=None):
    """One tick: adc_i, adc_q int16[N] in; pzt_out, spool_out, aom_out int32[N]
    out; blade_serial uint64[N] or None (see tick_batch)."""
    # [np.newaxis, :] views any layout (strided columns of a frame too) as one row
    if blade_serial is None:
        tick_batch(cfg, st, adc_i[np.newaxis, :], adc_q[np.newaxis, :], pzt_out[np.newaxis, :],
                   spool_out[np.newaxis, :], aom_out[np.newaxis, :])
    else:
        tick_batch(cfg, st, adc_i[np.newaxis, :], adc_q[np.newaxis, :], pzt_out[np.newaxis, :],
                   spool_out[np.newaxis, :], aom_out[np.newaxis, :], blade_serial[np.newaxis, :])


def bumpless_rehistory(old: BankConfig, new: BankConfig, st: BankState) -> None:
    """Rewrite stage histories so a coefficient change does not kick the output.

    For each stage whose coefficients changed, the output history is kept
    (y1 = y2 = last output) and the input history set to the input that holds
    that output in steady state under the new coefficients:
    x_eq = y (1 + a1 + a2) / (b0 + b1 + b2); integrators (1 + a1 + a2 = 0)
    get x_eq = 0. The next output then continues from the last one.
    """
    if not (old.coeffs.shape == new.coeffs.shape == st.active.shape):
        raise ValueError(f"stage counts differ (old config {old.coeffs.shape[0]}, new "
                         f"{new.coeffs.shape[0]}, state {st.active.shape[0]}): bring them to "
                         "one count with pad_stages / grow_stages first (Bank.swap_config does)")
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


def _stages_to(a, n_stages, fill):
    """[S, k, N] stage-major array a extended to n_stages stages, the new ones
    set to fill (broadcast to [n_stages - S, k, N])."""
    out = np.empty((n_stages,) + a.shape[1:], a.dtype)
    out[:a.shape[0]] = a
    out[a.shape[0]:] = fill
    return out


def pad_stages(cfg: BankConfig, n_stages: int) -> BankConfig:
    """cfg with identity stages appended up to n_stages (a new BankConfig;
    cfg itself if it has that many). An identity stage after the last one
    passes its output through unchanged, clamped to the same rails (the
    last stage's limits), so the padded config computes what cfg does."""
    s = cfg.coeffs.shape[0]
    if not s <= n_stages <= MAX_STAGES:
        raise ValueError(f"cannot pad {s} stages to {n_stages} (at most {MAX_STAGES})")
    if n_stages == s:
        return cfg
    return cfg._replace(coeffs=_stages_to(cfg.coeffs, n_stages, IDENTITY_COEFFS[None, :, None]),
                        limits=_stages_to(cfg.limits, n_stages, cfg.limits[s - 1]))


def grow_stages(cfg: BankConfig, st: BankState, n_stages: int) -> BankState:
    """st with identity stages appended up to n_stages: new hist and active
    arrays (every other field is the same array); st itself if it has that
    many. cfg: the config st runs with (its hold coefficients). The new
    stages start as if they had always run after the last one: their input
    and output histories are the last stage's output history, their
    coefficients the identity (RUN) or the hold set (HOLD, PARK)."""
    s = st.hist.shape[0]
    if not s <= n_stages <= MAX_STAGES:
        raise ValueError(f"cannot grow {s} stages to {n_stages} (at most {MAX_STAGES})")
    if n_stages == s:
        return st
    y1, y2 = st.hist[s - 1, 2], st.hist[s - 1, 3]
    run = st.mode == MODE_RUN
    active = np.where(run[None, :], IDENTITY_COEFFS[:, None], cfg.hold_coeffs[:, None])
    return st._replace(hist=_stages_to(st.hist, n_stages, np.stack([y1, y2, y1, y2])),
                       active=_stages_to(st.active, n_stages, active.astype(np.int32)))


class Bank:
    """A bank ready to tick: holds config and state, swaps config between ticks."""

    def __init__(self, settings: BankSettings | None = None):
        self.settings = settings or BankSettings()
        self.config = self.settings.build()
        self.state = new_state(self.config)
        n = self.n_channels
        self._out = tuple(np.empty(n, np.int32) for _ in range(3))
        self._last_in = (np.zeros(n, np.int16), np.zeros(n, np.int16))

    @property
    def n_channels(self) -> int:
        return self.config.coeffs.shape[2]

    def swap_config(self, settings: BankSettings) -> None:
        """Build the new config first (errors leave the old one running), then swap.

        The bank runs as many servo stages as its longest servo has sections.
        A new config with fewer is padded with identity stages (the bank keeps
        its stage count); one with more grows the state by identity stages
        first (`grow_stages`: `state.hist` and `state.active` become new
        arrays, every other state array stays). Either way the swap is
        bumpless (`bumpless_rehistory`)."""
        new = settings.build()
        if new.coeffs.shape[2] != self.config.coeffs.shape[2]:
            raise ValueError("a config swap cannot change the channel count")
        n_stages = max(new.coeffs.shape[0], self.state.active.shape[0])
        new = pad_stages(new, n_stages)
        old = pad_stages(self.config, n_stages)
        st = grow_stages(self.config, self.state, n_stages)
        bumpless_rehistory(old, new, st)
        self.config, self.settings, self.state = new, settings, st

    def step(self, adc_i, adc_q, blade_serial=None):
        """One tick; returns (pzt_code, spool_code, aom_ftw) int32 arrays (reused).

        blade_serial: uint64[N] serials the board reports (0: no blade), or
        None when the board reports none."""
        self._last_in = (adc_i, adc_q)
        if blade_serial is None:
            tick(self.config, self.state, adc_i, adc_q, *self._out)
        else:
            tick(self.config, self.state, adc_i, adc_q, *self._out,
                 np.asarray(blade_serial, np.uint64))
        return self._out

    def step_missing(self, channels=None):
        """One tick without the board's frame (host watchdog: COMM_TIMEOUT).

        Locked channels hold their actuators (HOLDOVER, turn count kept) and
        relock, confirmed, when frames come back; the others wait. channels:
        the channels whose sample is missing (default: all). Returns the
        (held) outputs like `step`."""
        fm = self.state.frame_missing
        if channels is None:
            fm[:] = 1
        else:
            fm[np.asarray(channels)] = 1
        try:
            tick(self.config, self.state, self._last_in[0], self._last_in[1], *self._out)
        finally:
            fm[:] = 0
        return self._out

    def read_faults(self):
        """(live, sticky) fault bits per channel; reading clears the sticky bits."""
        live = self.state.faults_live.copy()
        sticky = self.state.faults_sticky.copy()
        self.state.faults_sticky[:] = 0
        return live, sticky

    def register(self, name: str) -> np.ndarray:
        """One ladder register of every channel (a row of state.lad, a view):
        one of firmware.channel_fsm.LAD_FIELDS, e.g. "holdover_count",
        "tau_rt_fs", "quiet_until"."""
        try:
            return self.state.lad[LAD_FIELDS.index(name)]
        except ValueError:
            raise ValueError(f"no ladder register {name!r}; registers: "
                             f"{', '.join(LAD_FIELDS)}") from None

    def report(self) -> list[dict]:
        """Per-channel telemetry in physical units: state, the blade and its
        calibration, the free-running counters (no side effects)."""
        st = self.state
        r = self.register
        rate = self.settings.loop_rate_hz
        out = []
        for c in range(self.n_channels):
            cal = bool(r("cal_ok")[c])
            out.append({
                "ch": c, "state": STATE_NAMES[int(st.chan_state[c])],
                "blade_serial": int(st.blade_serial[c]),
                "tau_rt_s": r("tau_rt_fs")[c] * 1e-15 if cal else None,
                "tau_rt_sigma_s": r("tau_rt_sigma_fs")[c] * 1e-15 if cal else None,
                "oneway_s": r("oneway_fs")[c] * 1e-15 if cal else None,
                "offset_known": bool(r("offset_known")[c]),
                "cal_status": CAL_STATUS_NAMES[int(r("cal_status")[c])],
                "beat_hz": float(r("beat")[c]) * rate / units.TURN,
                "aom_offset_hz": float(st.aom_off[c]) * self.settings.aom_clock_hz / 2.0 ** 32,
                "slips": int(st.slip_count[c]), "relocks": int(st.relock_count[c]),
                "holdovers": int(r("holdover_count")[c]), "cycles_lost": int(r("cycle_lost_count")[c]),
                "nonreciprocity_events": int(r("nonrecip_count")[c]),
                "faults": int(r("fault_count")[c]),
                "live": flag_names(int(st.faults_live[c])),
            })
        return out
