"""Per-channel state ladder (DESIGN section 4), evaluated inside the jitted tick.

    EMPTY --power >= detect for detect_time (and a blade reported)--> DETECTED
    DETECTED: the PZT parks at mid-range (its offset handed to the spool) and
        settles --> CALIBRATING (or straight to ACQUIRING without calibration)
    CALIBRATING: AOM Thue-Morse steps give the round-trip delay and the beat
        frequency; the blade's stored one-way offset is looked up by serial
        --> ACQUIRING, or CAL_FAILED --> FAULT
    ACQUIRING: FREQ (a beat beyond the pull-in range goes to the AOM, then a
        window checks it) --> CLOSE (setpoint captured at the present phase,
        the loop closed with a gain ramp) --lock criteria for lock_time--> LOCKED
    LOCKED --|error| > loss window or the PZT at its threshold for loss_time-->
        ACQUIRING (LOSS_OF_LOCK; the new setpoint gives up the absolute
        cycle: CYCLE_SLIP); saturation losses park the PZT first (DETECTED)
    LOCKED --return weak / ADC over range / a step beyond the slew limit /
        no frame--> HOLDOVER (actuators held, turn count kept; unwrapping
        continues while the phase is still trackable)
    HOLDOVER --return above detect, consistent for relock_confirm--> LOCKED
        with the cycle kept when the phase is continuous (within
        continuity_window of the held phase plus the AOM's known motion, and
        untracked for no longer than holdover_keep_cycle), else ACQUIRING
        with CYCLE_SLIP ("absolute cycle lost")
    HOLDOVER --no return for holdover_max--> LOSS_OF_LOCK, EMPTY (or FAULT
        when the board still reports the blade: a dark blade)
    FAULT (latched: calibration failed, repeated saturation, repeated slips,
        acquisition time-out, dark blade) --back-off, doubling per fault-->
        EMPTY (re-detect, recalibrate after CAL_FAILED)
    any --the board reports no blade (serial 0) or another blade--> EMPTY

Lock detection is count based and hysteretic: lock_time (slow) of |error|
<= lock window with the return power above the weak threshold, the PZT
inside its headroom and the gain ramp done; loss after loss_time (fast) of
|error| > loss window (wider) or the PZT at its saturation threshold.

Speed. The tick handles a steady LOCKED channel inline (a few compares,
`firmware.bank.tick_batch`); every other state, and every LOCKED tick with
an event, calls `ladder_slow`, the one function here that takes the whole
config and state (numba marshals a namedtuple member by member, for
compilation and for each call: helpers take the few arrays they touch).
A channel's ladder reads and writes only its own column of the state, so
inserting or removing a blade never touches another channel.
"""
import numpy as np
from numba import njit

from firmware.calibration import (aom_codes, CAL_ROWS, CAL_Y0, CAL_OK, TM_CHIPS, cal_accumulate,
                                  cal_drive, cal_finish)
from firmware.faults import (EMPTY, DETECTED, CALIBRATING, ACQUIRING, LOCKED, HOLDOVER, FAULT,
                             LOSS_OF_LOCK, WEAK_RETURN, CYCLE_SLIP, CAL_FAILED, NONRECIPROCITY,
                             COMM_TIMEOUT, ADC_OVERRANGE)

MODE_PARK, MODE_RUN, MODE_HOLD = 0, 1, 2
CAL_NEVER, CAL_AUTO, CAL_ALWAYS = 0, 1, 2
SERIAL_NONE = np.uint64(0)                            # the board reports no blade
SERIAL_UNREPORTED = np.uint64(0xFFFF_FFFF_FFFF_FFFF)  # the board reports no serials

SUB_FREQ, SUB_CLOSE = 0, 1                            # ACQUIRING sub-phases
HOLD_WEAK, HOLD_STEP, HOLD_COMM = 0, 1, 2             # HOLDOVER causes (sub)

# fault causes (bits of st.fault_cause)
FC_CAL, FC_SAT, FC_SLIPS, FC_ACQ, FC_DARK = 1, 2, 4, 8, 16
FAULT_CAUSE_NAMES = {FC_CAL: "calibration failed", FC_SAT: "repeated saturation",
                     FC_SLIPS: "repeated slips", FC_ACQ: "acquisition time-out",
                     FC_DARK: "blade reported but dark"}

# live bits pass 2 owns (recomputed every tick); PZT_SAT / SPOOL_SAT belong to the actuators
PASS2_BITS = np.uint32(LOSS_OF_LOCK | WEAK_RETURN | CYCLE_SLIP | CAL_FAILED | NONRECIPROCITY |
                       COMM_TIMEOUT | ADC_OVERRANGE)

EV_NONE, EV_LOSS, EV_LOSS_SAT = 0, 1, 2               # events the inline LOCKED path hands over

# Ladder registers packed by role, one row per register and one column per
# channel (one array each: numba marshals a namedtuple member by member, on
# every call from Python and into ladder_slow, so fewer members is a faster
# tick and a shorter compile). st.lad: int64[len(LAD_FIELDS), N]:
LAD_FIELDS = ("phase_raw", "hold_ticks", "hold_m", "hold_aom", "hold_vel", "hold_step",
    "hold_from_acq", "hold_over", "confirm", "tracking", "ramp", "sat_count", "sat_losses",
    "slip_recent", "acq_tries", "park_moved", "was_locked", "lock_tick", "quiet_until",
    "fault_cause", "backoff_exp", "backoff_ticks", "free_mark", "beat", "cal_ok",
    "cal_status", "tau_rt_fs", "tau_rt_sigma_fs", "oneway_fs", "offset_known",
    "holdover_count", "cycle_lost_count", "nonrecip_count", "fault_count",)
(L_PHASE_RAW, L_HOLD_TICKS, L_HOLD_M, L_HOLD_AOM, L_HOLD_VEL, L_HOLD_STEP,
 L_HOLD_FROM_ACQ, L_HOLD_OVER, L_CONFIRM, L_TRACKING, L_RAMP, L_SAT_COUNT, L_SAT_LOSSES,
 L_SLIP_RECENT, L_ACQ_TRIES, L_PARK_MOVED, L_WAS_LOCKED, L_LOCK_TICK, L_QUIET_UNTIL,
 L_FAULT_CAUSE, L_BACKOFF_EXP, L_BACKOFF_TICKS, L_FREE_MARK, L_BEAT, L_CAL_OK,
 L_CAL_STATUS, L_TAU_RT_FS, L_TAU_RT_SIGMA_FS, L_ONEWAY_FS, L_OFFSET_KNOWN,
 L_HOLDOVER_COUNT, L_CYCLE_LOST_COUNT, L_NONRECIP_COUNT, L_FAULT_COUNT) = range(34)
# cfg.lad_ch: int64[len(LADCH_FIELDS), N], per-channel thresholds only the ladder reads
LADCH_FIELDS = ("detect_power", "track_power", "detect_ticks", "lock_window", "lock_ticks",
    "max_step_codes",)
(K_DETECT_POWER, K_TRACK_POWER, K_DETECT_TICKS, K_LOCK_WINDOW, K_LOCK_TICKS,
 K_MAX_STEP_CODES) = range(6)
# cfg.lad_int: int64[len(LADINT_FIELDS)], bank-wide integer settings
LADINT_FIELDS = ("pzt_mid", "pzt_to_spool_q16", "pzt_codes_q16", "park_shift", "settle_ticks",
    "confirm_ticks", "recover_ticks", "keep_cycle_ticks", "cont_window_codes",
    "step_keep_codes", "holdover_max_ticks", "slip_fault_count", "slip_window_ticks",
    "sat_fault_count", "retry_ticks", "retry_max_exp", "cal_mode", "cal_chip", "cal_skip",
    "cal_periods", "cal_small_every", "cal_a_small", "cal_a_large", "pullin_codes",
    "acq_freq_ticks", "acq_max_tries", "ramp_ticks", "acq_timeout_ticks", "trim_codes",
    "trim_log2",)
(I_PZT_MID, I_PZT_TO_SPOOL_Q16, I_PZT_CODES_Q16, I_PARK_SHIFT, I_SETTLE_TICKS,
 I_CONFIRM_TICKS, I_RECOVER_TICKS, I_KEEP_CYCLE_TICKS, I_CONT_WINDOW_CODES,
 I_STEP_KEEP_CODES, I_HOLDOVER_MAX_TICKS, I_SLIP_FAULT_COUNT, I_SLIP_WINDOW_TICKS,
 I_SAT_FAULT_COUNT, I_RETRY_TICKS, I_RETRY_MAX_EXP, I_CAL_MODE, I_CAL_CHIP, I_CAL_SKIP,
 I_CAL_PERIODS, I_CAL_SMALL_EVERY, I_CAL_A_SMALL, I_CAL_A_LARGE, I_PULLIN_CODES,
 I_ACQ_FREQ_TICKS, I_ACQ_MAX_TRIES, I_RAMP_TICKS, I_ACQ_TIMEOUT_TICKS, I_TRIM_CODES,
 I_TRIM_LOG2) = range(30)
# cfg.lad_f: float64[len(LADF_FIELDS)], bank-wide float settings (calibration)
LADF_FIELDS = ("tick_s", "aom_clock_hz", "cal_tol_rel", "cal_tol_abs_s", "cal_max_tau_rt_s",
    "cal_k_sigma", "cal_k_agree",)
(F_TICK_S, F_AOM_CLOCK_HZ, F_CAL_TOL_REL, F_CAL_TOL_ABS_S, F_CAL_MAX_TAU_RT_S,
 F_CAL_K_SIGMA, F_CAL_K_AGREE) = range(7)

RAMP_BITS = 8
VEL_SHIFT = 3                   # the free-running velocity estimate averages ~8 ticks
INT32_MAX = 2**31 - 1
INT32_MIN = -2**31
STATE_TICKS_MAX = 1 << 30


@njit(cache=True, inline="always")
def wrap32(d):
    """int64 -> int32 two's-complement wrap, as int64 (explicit: .py_func ints do not wrap)."""
    return np.int64(((d + 0x80000000) & 0xFFFFFFFF) - 0x80000000)


@njit(cache=True, inline="always")
def sat32(v):
    return np.int32(max(min(v, np.int64(INT32_MAX)), np.int64(INT32_MIN)))


@njit(cache=True, inline="always")
def servo_error(setpoint, acc, shift):
    """The servo's input: (setpoint - acc) >> shift, saturated to int32.

    setpoint, acc: int64 unwrapped phase codes (2**32 per turn). shift = 0
    keeps full resolution (2**-32 turn, +-half a turn of range: a rack link);
    each bit of shift doubles the range and halves the resolution (8 bits:
    +-128 turns = +-330 fs one-way, 1.5e-4 as steps: a long link, whose
    in-loop error is set by its delay). The arithmetic shift floors.
    """
    return sat32((setpoint - acc) >> shift)


@njit(cache=True)
def set_mode(active, coeffs, hold, mode, c, m):
    """Load the coefficients mode m runs with: RUN the servo's, HOLD/PARK the
    hold set (outputs kept, input histories still ingesting)."""
    if mode[c] == m:
        return
    mode[c] = m
    for sg in range(active.shape[0]):
        for j in range(5):
            active[sg, j, c] = coeffs[sg, j, c] if m == MODE_RUN else hold[j]


@njit(cache=True)
def park_step(hist, off_hist, lad, to_spool_q16, shift, c):
    """One step of the actuator command toward 0 (PZT mid-range), first order
    with a time constant of 2**shift ticks. to_spool_q16 > 0 (PZT actuator):
    the command's offset is handed to the spool once, by shifting both
    output histories of the offload section (an integrator: its output
    shifts by the same amount and stays there). True once parked (every
    servo history zero)."""
    last = hist.shape[0] - 1
    y = np.int64(hist[last, 2, c])
    if y == 0:
        return True
    if lad[L_PARK_MOVED, c] == 0 and to_spool_q16 > 0:
        d = (y * to_spool_q16 + (1 << 15)) >> 16               # 31 + 17 bit
        for j in (2, 3):
            off_hist[c, j] = sat32(np.int64(off_hist[c, j]) + d)
        lad[L_PARK_MOVED, c] = 1
    y -= (y + (np.int64(1) << (shift - 1))) >> shift
    if abs(y) < (np.int64(1) << shift):
        y = 0
    hist[last, 2, c] = y
    hist[last, 3, c] = y
    if y != 0:
        return False
    for sg in range(hist.shape[0]):
        for j in range(4):
            hist[sg, j, c] = 0
    lad[L_PARK_MOVED, c] = 0
    return True


@njit(cache=True)
def ladder_slow(cfg, st, c, k, ser, over, comm, event):
    """One ladder step of channel c at tick k, for every case the tick's inline
    LOCKED path does not take. ser: the blade serial the board reports
    (SERIAL_UNREPORTED if it reports none); over: ADC over range this tick;
    comm: no sample this tick (COMM_TIMEOUT); event: EV_LOSS / EV_LOSS_SAT
    when the inline path has already committed the sample and counted a loss
    of lock (only the transition is done here). Mutates channel c's column
    of the state, sets the servo input st.err[c], returns the pass-2 bits."""
    # --- the arrays this ladder touches (unpacked once)
    chan_state, sub, state_ticks, fsm_count = st.chan_state, st.sub, st.state_ticks, st.fsm_count
    active, coeffs, hold, mode, hist = st.active, cfg.coeffs, cfg.hold_coeffs, st.mode, st.hist
    phase_acc, phase_free, phase_last, phase_now = (st.phase_acc, st.phase_free, st.phase_last,
                                                    st.phase_now)
    setpoint, err = st.setpoint, st.err
    lad, lch, li, lf = st.lad, cfg.lad_ch, cfg.lad_int, cfg.lad_f
    aom_off, aom_mod, aom_min, aom_max = st.aom_off, st.aom_mod, cfg.aom_min, cfg.aom_max
    kq16 = cfg.aom_kq16
    cal = st.cal
    bits = np.uint32(ADC_OVERRANGE) if over else np.uint32(0)
    s = np.int64(chan_state[c])
    p = st.power[c]
    dev = np.int64(st.step[c])          # deviation of this sample from the predicted step
    pred = st.pred[c]
    raw = dev + pred                    # the measured step, AOM included (the loop's phase)
    m = st.aom_step[c]
    corr = raw - m                      # the step with the AOM's known motion taken out
    ph = np.int64(phase_now[c])
    vel = st.vel
    unreported = ser == SERIAL_UNREPORTED
    is_pzt = cfg.actuator[c] == 0

    go = -1                     # the state to enter at the end (-1: stay)
    go_sub = 0
    mode_to = -1                # the servo mode to load at the end (-1: keep)
    capture = False             # close the loop at the present phase
    fault = 0                   # fault cause to latch
    acquire = -1                # start ACQUIRING: 1 with a frequency window, 0 closing at once
    slip = False                # the absolute cycle is lost

    if event != EV_NONE:
        s = -1                  # the transition only (below)
    elif comm:
        # No sample: locked channels hold (HOLDOVER, cycle kept by the held
        # phase); a calibration starts over; the others wait.
        bits |= np.uint32(COMM_TIMEOUT)
        if s == LOCKED or s == ACQUIRING:
            s = -2              # -> HOLDOVER (HOLD_COMM) below
        elif s == HOLDOVER:
            lad[L_HOLD_TICKS, c] += 1
            lad[L_HOLD_M, c] += pred
            lad[L_HOLD_AOM, c] += m
            lad[L_CONFIRM, c] = 0
            lad[L_TRACKING, c] = 0
            s = -1
        elif s == CALIBRATING:
            aom_mod[c] = 0
            go = DETECTED
            s = -1
        else:
            s = -1
    elif not unreported and s != EMPTY and ser != st.blade_serial[c]:
        # the board's blade report overrides everything: removed or replaced
        if lad[L_WAS_LOCKED, c] != 0 and (s == LOCKED or s == HOLDOVER):
            bits |= np.uint32(LOSS_OF_LOCK)
        s = EMPTY
        set_mode(active, coeffs, hold, mode, c, MODE_PARK)
        aom_mod[c] = 0
        aom_off[c] = 0
        lad[L_WAS_LOCKED, c] = 0
        lad[L_FAULT_CAUSE, c] = 0
        lad[L_BACKOFF_EXP, c] = 0
        state_ticks[c] = 0
        fsm_count[c] = 0
        chan_state[c] = EMPTY

    weak = p < cfg.weak_power[c]
    trackable = (p >= lch[K_TRACK_POWER, c]) and not over
    step_ok = abs(dev) <= lch[K_MAX_STEP_CODES, c]

    if s == EMPTY:
        _commit(phase_acc, phase_free, phase_last, phase_now, c, raw, corr)
        set_mode(active, coeffs, hold, mode, c, MODE_PARK)
        park_step(hist, st.off_hist, lad, li[I_PZT_TO_SPOOL_Q16] if is_pzt else 0,
                  li[I_PARK_SHIFT], c)
        present = unreported or ser != SERIAL_NONE
        if present and p >= lch[K_DETECT_POWER, c] and not over:
            fsm_count[c] += 1
        else:
            fsm_count[c] = 0
        err[c] = 0
        if fsm_count[c] >= lch[K_DETECT_TICKS, c]:
            if ser != st.blade_serial[c] or unreported:
                # a new blade: forget the previous one
                st.blade_serial[c] = ser
                lad[L_WAS_LOCKED, c] = 0
                lad[L_CAL_OK, c] = 0
                lad[L_TAU_RT_FS, c] = 0
                lad[L_TAU_RT_SIGMA_FS, c] = 0
                lad[L_ONEWAY_FS, c] = 0
                lad[L_OFFSET_KNOWN, c] = 0
                lad[L_SAT_LOSSES, c] = 0
                lad[L_SLIP_RECENT, c] = 0
                lad[L_BEAT, c] = 0
                aom_off[c] = 0
            vel[c] = 0                   # the free-running velocity, learnt again
            _enter(chan_state, sub, state_ticks, fsm_count, c, DETECTED, 0)
            state_ticks[c] = -1          # DETECTED runs in this same tick
            s = DETECTED
            go = -1

    if s == DETECTED:
        _commit(phase_acc, phase_free, phase_last, phase_now, c, raw, corr)
        vel[c] += (corr - vel[c]) >> VEL_SHIFT
        state_ticks[c] += 1
        parked = park_step(hist, st.off_hist, lad, li[I_PZT_TO_SPOOL_Q16] if is_pzt else 0,
                           li[I_PARK_SHIFT], c)
        err[c] = 0
        do_cal = (li[I_CAL_MODE] == CAL_ALWAYS or (li[I_CAL_MODE] == CAL_AUTO and not unreported)) \
            and lad[L_CAL_OK, c] == 0
        if p < lch[K_DETECT_POWER, c] or over:
            go = EMPTY
            mode_to = MODE_PARK
        elif parked and (state_ticks[c] >= li[I_SETTLE_TICKS] or not do_cal):
            if do_cal:
                go = CALIBRATING
                mode_to = MODE_PARK
                for r in range(CAL_ROWS):
                    cal[r, c] = 0
                aom_mod[c] = np.int32(cal_drive(0, li[I_CAL_CHIP], li[I_CAL_SMALL_EVERY],
                                                li[I_CAL_PERIODS], li[I_CAL_A_SMALL], li[I_CAL_A_LARGE]))
            else:
                if lad[L_CAL_OK, c] == 0:
                    _lookup_offset(cfg.blade_serials, cfg.blade_offsets_fs, st.blade_serial, lad, c)
                acquire = 1 if lad[L_CAL_OK, c] != 0 else 0

    elif s == CALIBRATING:
        n = state_ticks[c] + 1
        state_ticks[c] = n
        err[c] = 0
        if p < lch[K_TRACK_POWER, c]:
            # the blade went dark mid-calibration: start over from EMPTY
            bits |= np.uint32(WEAK_RETURN)
            aom_mod[c] = 0
            go = EMPTY
            mode_to = MODE_PARK
        elif over or not step_ok:
            bits |= np.uint32(CAL_FAILED)
            fault = FC_CAL
        else:
            _commit(phase_acc, phase_free, phase_last, phase_now, c, raw, corr)
            vel[c] += (corr - vel[c]) >> VEL_SHIFT
            chip = li[I_CAL_CHIP]
            v = n - cfg.aom_latency
            total = li[I_CAL_PERIODS] * TM_CHIPS * chip
            if v == 0:
                cal[CAL_Y0, c] = phase_free[c]
            if 0 <= v < total:
                f_now = cal_drive(v, chip, li[I_CAL_SMALL_EVERY], li[I_CAL_PERIODS], li[I_CAL_A_SMALL],
                                  li[I_CAL_A_LARGE])
                f_prev = cal_drive(v - 1, chip, li[I_CAL_SMALL_EVERY], li[I_CAL_PERIODS],
                                   li[I_CAL_A_SMALL], li[I_CAL_A_LARGE])
                cal_accumulate(cal, c, v, phase_free[c] - cal[CAL_Y0, c], f_now, f_prev,
                               chip, li[I_CAL_SKIP], li[I_CAL_SMALL_EVERY])
            aom_mod[c] = np.int32(cal_drive(n, chip, li[I_CAL_SMALL_EVERY], li[I_CAL_PERIODS],
                                            li[I_CAL_A_SMALL], li[I_CAL_A_LARGE]))
            if v == total - 1:
                tau, sig, beat, status = cal_finish(
                    cal, c, chip - li[I_CAL_SKIP], float(li[I_CAL_A_SMALL]), float(li[I_CAL_A_LARGE]),
                    lf[F_TICK_S], lf[F_AOM_CLOCK_HZ], lf[F_CAL_TOL_REL], lf[F_CAL_TOL_ABS_S],
                    lf[F_CAL_MAX_TAU_RT_S], lf[F_CAL_K_SIGMA], chip, lf[F_CAL_K_AGREE])
                lad[L_CAL_STATUS, c] = status
                lad[L_TAU_RT_FS, c] = np.int64(round(tau * 1e15))
                lad[L_TAU_RT_SIGMA_FS, c] = np.int64(round(sig * 1e15))
                lad[L_BEAT, c] = np.int64(round(beat))
                vel[c] = np.int64(round(beat))
            elif v >= total + 1:
                # the last modulation has left the pipeline: act on the result
                if lad[L_CAL_STATUS, c] != CAL_OK:
                    bits |= np.uint32(CAL_FAILED)
                    fault = FC_CAL
                else:
                    lad[L_CAL_OK, c] = 1
                    _lookup_offset(cfg.blade_serials, cfg.blade_offsets_fs, st.blade_serial, lad, c)
                    moved = _apply_beat(lad, aom_off, aom_min, aom_max, kq16, c,
                                        lad[L_BEAT, c], li[I_PULLIN_CODES])
                    acquire = 1 if moved else 0

    elif s == FAULT:
        _commit(phase_acc, phase_free, phase_last, phase_now, c, raw, corr)
        err[c] = 0
        if lad[L_FAULT_CAUSE, c] & FC_CAL:
            bits |= np.uint32(CAL_FAILED)
        b = lad[L_BACKOFF_TICKS, c] - 1
        lad[L_BACKOFF_TICKS, c] = b
        if b <= 0:
            # retry: re-detect (and recalibrate after a calibration failure)
            if lad[L_FAULT_CAUSE, c] & FC_CAL:
                lad[L_CAL_OK, c] = 0
            lad[L_FAULT_CAUSE, c] = 0
            go = EMPTY
            mode_to = MODE_PARK

    elif s == HOLDOVER:
        if weak:
            bits |= np.uint32(WEAK_RETURN)
        lad[L_HOLD_TICKS, c] += 1
        if over:
            lad[L_HOLD_OVER, c] = 1
        # keep following the phase while it is trackable (a fade, not a loss)
        if lad[L_TRACKING, c] != 0 and trackable and step_ok:
            _commit(phase_acc, phase_free, phase_last, phase_now, c, raw, corr)
            vel[c] += (corr - vel[c]) >> VEL_SHIFT
        else:
            lad[L_TRACKING, c] = 0
            lad[L_HOLD_M, c] += pred
            lad[L_HOLD_AOM, c] += m
        # the return: trackable again (above the track threshold, in range) and
        # consistent tick to tick with one velocity (hold_vel: the free-running velocity of the
        # returned phase, AOM excluded; a detuned return shows a new one)
        rv = wrap32(ph - np.int64(lad[L_PHASE_RAW, c]) - m)
        lad[L_PHASE_RAW, c] = np.int32(ph)
        if trackable:
            if abs(rv - lad[L_HOLD_VEL, c]) <= lch[K_MAX_STEP_CODES, c]:
                lad[L_CONFIRM, c] += 1
                lad[L_HOLD_VEL, c] += (rv - lad[L_HOLD_VEL, c]) >> 2
            else:
                lad[L_CONFIRM, c] = 0
                lad[L_HOLD_VEL, c] = rv
                lad[L_HOLD_OVER, c] = 1          # an inconsistent sample: a glitch, not a step
        else:
            lad[L_CONFIRM, c] = 0
        if lad[L_CONFIRM, c] >= li[I_CONFIRM_TICKS] and lad[L_TRACKING, c] == 0 and \
                abs(lad[L_HOLD_VEL, c] - vel[c]) > lch[K_MAX_STEP_CODES, c]:
            # back, but at another frequency (a detuned return): the cycle is
            # lost; acquire again, the AOM taking the new beat
            vel[c] = lad[L_HOLD_VEL, c]
            phase_acc[c] += wrap32(ph - np.int64(phase_last[c]) - lad[L_HOLD_M, c]) + lad[L_HOLD_M, c]
            phase_last[c] = np.int32(ph)
            if lad[L_HOLD_FROM_ACQ, c] == 0:
                bits |= np.uint32(LOSS_OF_LOCK)
                st.relock_count[c] += 1
            slip = True
            acquire = 1
        elif lad[L_CONFIRM, c] >= li[I_CONFIRM_TICKS]:
            d = np.int64(0)
            if lad[L_TRACKING, c] == 0:
                # predicted phase: the held one plus the predicted motion since
                # (the AOM's known steps and the free-running velocity)
                d = wrap32(ph - np.int64(phase_last[c]) - lad[L_HOLD_M, c])
                phase_acc[c] += d + lad[L_HOLD_M, c]
                phase_free[c] += d + lad[L_HOLD_M, c] - lad[L_HOLD_AOM, c]
                phase_last[c] = np.int32(ph)
            # a drift while dark is kept within the continuity window. A step of
            # a lit return (HOLD_STEP) is judged by its size on the tick it
            # came (hold_step: one tick of motion, where d also has the free
            # drift of the hold), kept within the tighter step window only: a
            # measured step may be it +- whole turns, and a step has no prior
            keep = lad[L_TRACKING, c] != 0 or (lad[L_HOLD_TICKS, c] <= li[I_KEEP_CYCLE_TICKS] and
                                           abs(d) <= li[I_CONT_WINDOW_CODES])
            if sub[c] == HOLD_STEP and lad[L_HOLD_OVER, c] == 0:
                # a clean step: the first sample and all since agree
                keep = keep and abs(lad[L_HOLD_STEP, c]) <= li[I_STEP_KEEP_CODES]
                if abs(lad[L_HOLD_STEP, c]) > cfg.step_detect_codes[c]:
                    bits |= np.uint32(NONRECIPROCITY)     # the round trip stepped
                    lad[L_NONRECIP_COUNT, c] += 1
            if lad[L_HOLD_FROM_ACQ, c] != 0:
                acquire = 0
            elif keep:
                go = LOCKED
                mode_to = MODE_RUN
                err[c] = servo_error(setpoint[c], phase_acc[c], cfg.err_shift)
                # the loop pulls the error back now: its own steps are no events
                lad[L_QUIET_UNTIL, c] = k + li[I_RECOVER_TICKS]
            else:
                slip = True
                acquire = 0
        elif lad[L_HOLD_TICKS, c] >= li[I_HOLDOVER_MAX_TICKS]:
            bits |= np.uint32(LOSS_OF_LOCK)
            if unreported or ser == SERIAL_NONE:
                go = EMPTY
                mode_to = MODE_PARK
            else:
                fault = FC_DARK

    elif s == ACQUIRING or s == LOCKED:
        settled = s == LOCKED and k >= lad[L_QUIET_UNTIL, c]
        pulling = s == ACQUIRING and sub[c] == SUB_CLOSE       # pull-in: big steps expected
        dark = p < lch[K_TRACK_POWER, c]
        if weak:
            bits |= np.uint32(WEAK_RETURN)
        if dark or over or (not step_ok and not pulling) or \
                (settled and abs(dev) > cfg.step_detect_codes[c]):
            # no usable sample: hold (HOLDOVER), keep the turn count. A weak
            # return whose phase is still trackable is not a loss: the loop
            # runs on (WEAK_RETURN live). A step beyond step_detect of a
            # settled loop is held: if the phase stays there (confirmed) the
            # round trip stepped (NONRECIPROCITY), if not it was a glitch
            s = -3 if (dark or over) else -4
        else:
            _commit(phase_acc, phase_free, phase_last, phase_now, c, raw, corr)
            e = servo_error(setpoint[c], phase_acc[c], cfg.err_shift)
            rail = is_pzt and abs(np.int64(st.pzt_code[c]) - li[I_PZT_MID]) >= cfg.pzt_sat_code[c]
            if s == ACQUIRING:
                state_ticks[c] = min(state_ticks[c] + 1, STATE_TICKS_MAX)
            locked_for = k - lad[L_LOCK_TICK, c]
            if s == ACQUIRING and sub[c] == SUB_FREQ:
                err[c] = 0
                vel[c] += (corr - vel[c]) >> VEL_SHIFT
                if state_ticks[c] >= li[I_ACQ_FREQ_TICKS]:
                    beat = (phase_free[c] - lad[L_FREE_MARK, c]) // li[I_ACQ_FREQ_TICKS]
                    vel[c] = beat
                    lad[L_ACQ_TRIES, c] += 1
                    if _apply_beat(lad, aom_off, aom_min, aom_max, kq16, c, beat,
                                   li[I_PULLIN_CODES]):
                        if lad[L_ACQ_TRIES, c] > li[I_ACQ_MAX_TRIES]:
                            fault = FC_ACQ
                        state_ticks[c] = 0
                        lad[L_FREE_MARK, c] = phase_free[c]
                    else:
                        go = ACQUIRING
                        go_sub = SUB_CLOSE
                        capture = True
            elif s == ACQUIRING:
                # SUB_CLOSE: the gain ramp, the lock count alongside
                r = lad[L_RAMP, c]
                if r < li[I_RAMP_TICKS]:
                    r += 1
                    lad[L_RAMP, c] = r
                    e = np.int32((np.int64(e) * ((r << RAMP_BITS) // li[I_RAMP_TICKS])) >> RAMP_BITS)
                err[c] = e
                if rail:
                    fsm_count[c] = 0
                    lad[L_SAT_COUNT, c] += 1
                    if lad[L_SAT_COUNT, c] >= cfg.loss_ticks[c]:
                        lad[L_SAT_COUNT, c] = 0
                        lad[L_SAT_LOSSES, c] += 1
                        if lad[L_SAT_LOSSES, c] >= li[I_SAT_FAULT_COUNT]:
                            fault = FC_SAT
                        else:
                            go = DETECTED            # park and start again mid-range
                            mode_to = MODE_PARK
                else:
                    lad[L_SAT_COUNT, c] = 0
                    if abs(np.int64(e)) <= lch[K_LOCK_WINDOW, c]:
                        fsm_count[c] += 1
                    else:
                        fsm_count[c] = 0
                    if fsm_count[c] >= lch[K_LOCK_TICKS, c] and r >= li[I_RAMP_TICKS]:
                        go = LOCKED
                        lad[L_LOCK_TICK, c] = k
                        lad[L_QUIET_UNTIL, c] = k + li[I_RECOVER_TICKS]
                        lad[L_WAS_LOCKED, c] = 1
                        lad[L_BACKOFF_EXP, c] = 0
                        lad[L_FREE_MARK, c] = phase_free[c] - _pzt_phase(st.servo_y, li[I_PZT_CODES_Q16],
                                                                     is_pzt, c)
                    elif state_ticks[c] >= li[I_ACQ_TIMEOUT_TICKS]:
                        fault = FC_ACQ
            else:
                # LOCKED with an event, or the frequency-trim tick
                err[c] = e
                if abs(np.int64(e)) > cfg.loss_window[c] or rail:
                    fsm_count[c] += 1
                    if fsm_count[c] >= cfg.loss_ticks[c]:
                        event = EV_LOSS_SAT if rail else EV_LOSS
                else:
                    fsm_count[c] = 0
                if locked_for >= li[I_SLIP_WINDOW_TICKS]:
                    lad[L_SLIP_RECENT, c] = 0
                if (k & cfg.trim_mask) == 0:
                    # in-lock frequency trim (PZT actuator, calibrated link): the
                    # free-running beat over the last window, the PZT's share taken
                    # out; beyond freq_trim the AOM takes it, so neither the PZT
                    # nor the spool has to ramp for it
                    fp = phase_free[c] - _pzt_phase(st.servo_y, li[I_PZT_CODES_Q16], is_pzt, c)
                    if locked_for > cfg.trim_mask:
                        beat = (fp - lad[L_FREE_MARK, c]) >> li[I_TRIM_LOG2]
                        vel[c] = beat
                        if lad[L_CAL_OK, c] != 0 and is_pzt:
                            _apply_beat(lad, aom_off, aom_min, aom_max, kq16, c, beat,
                                        li[I_TRIM_CODES])
                    lad[L_FREE_MARK, c] = fp

    # --- transitions
    if event != EV_NONE:
        # LOCKED -> ACQUIRING: LOSS_OF_LOCK; the recapture gives up the absolute cycle
        bits |= np.uint32(LOSS_OF_LOCK)
        st.relock_count[c] += 1
        slip = True
        if event == EV_LOSS_SAT:
            lad[L_SAT_LOSSES, c] += 1
            if lad[L_SAT_LOSSES, c] >= li[I_SAT_FAULT_COUNT]:
                fault = FC_SAT
            else:
                go = DETECTED                    # park, then relock mid-range
                mode_to = MODE_PARK
        else:
            acquire = 1
    if s <= -2:
        # -> HOLDOVER: actuators held, turn count kept
        lad[L_HOLDOVER_COUNT, c] += 1
        go = HOLDOVER
        go_sub = HOLD_COMM if s == -2 else (HOLD_WEAK if s == -3 else HOLD_STEP)
        mode_to = MODE_HOLD
        lad[L_HOLD_FROM_ACQ, c] = 1 if chan_state[c] != LOCKED else 0
        lad[L_HOLD_TICKS, c] = 0
        lad[L_HOLD_M, c] = pred
        lad[L_HOLD_AOM, c] = m
        lad[L_HOLD_VEL, c] = vel[c]
        lad[L_HOLD_STEP, c] = dev
        lad[L_CONFIRM, c] = 0
        lad[L_HOLD_OVER, c] = 1 if over else 0
        lad[L_PHASE_RAW, c] = np.int32(ph) if s != -2 else phase_last[c]
        track = False                   # entered dark, over range or on a step
        lad[L_TRACKING, c] = 1 if track else 0
        if track:
            _commit(phase_acc, phase_free, phase_last, phase_now, c, raw, corr)
            lad[L_HOLD_M, c] = 0
            lad[L_HOLD_AOM, c] = 0
    if slip:
        bits |= np.uint32(CYCLE_SLIP)
        st.slip_count[c] += 1
        lad[L_CYCLE_LOST_COUNT, c] += 1
        lad[L_SLIP_RECENT, c] += 1
        if lad[L_SLIP_RECENT, c] >= li[I_SLIP_FAULT_COUNT]:
            fault = FC_SLIPS
    if fault != 0:
        # FAULT: latched, actuators held, retried after a doubling back-off
        lad[L_FAULT_CAUSE, c] = fault
        lad[L_FAULT_COUNT, c] += 1
        e_ = min(np.int64(lad[L_BACKOFF_EXP, c]), li[I_RETRY_MAX_EXP])
        lad[L_BACKOFF_TICKS, c] = np.int32(min(li[I_RETRY_TICKS] << e_, np.int64(INT32_MAX)))
        if lad[L_BACKOFF_EXP, c] < 255:
            lad[L_BACKOFF_EXP, c] += 1
        aom_mod[c] = 0
        go = FAULT
        mode_to = MODE_HOLD
        acquire = -1
        capture = False
        err[c] = 0
    if acquire >= 0:
        lad[L_ACQ_TRIES, c] = 0
        lad[L_SAT_COUNT, c] = 0
        if acquire == 1 and lad[L_CAL_OK, c] != 0 and li[I_ACQ_FREQ_TICKS] > 0:
            go = ACQUIRING
            go_sub = SUB_FREQ
            mode_to = MODE_HOLD
            lad[L_FREE_MARK, c] = phase_free[c]
            err[c] = 0
        else:
            go = ACQUIRING
            go_sub = SUB_CLOSE
            capture = True
    if go == EMPTY:
        aom_mod[c] = 0
        aom_off[c] = 0
        lad[L_WAS_LOCKED, c] = 0
    if go >= 0:
        _enter(chan_state, sub, state_ticks, fsm_count, c, go, go_sub)
    if capture:
        # close bumplessly at the present phase: setpoint = phase, the first
        # stage's input history cleared (the error restarts at 0), every output
        # history kept (what HOLD held), the gain ramp from 0
        setpoint[c] = phase_acc[c]
        err[c] = 0
        hist[0, 0, c] = 0
        hist[0, 1, c] = 0
        lad[L_RAMP, c] = 0
        mode_to = MODE_RUN
    if mode_to >= 0:
        set_mode(active, coeffs, hold, mode, c, mode_to)
    return bits


@njit(cache=True, inline="always")
def _enter(chan_state, sub, state_ticks, fsm_count, c, s, sb):
    chan_state[c] = s
    sub[c] = sb
    state_ticks[c] = 0
    fsm_count[c] = 0


@njit(cache=True, inline="always")
def _commit(phase_acc, phase_free, phase_last, phase_now, c, raw, corr):
    """Accept this tick's sample: the unwrapped phase advances by the measured
    step (AOM included), the free phase by the step with the AOM taken out."""
    phase_acc[c] += raw
    phase_free[c] += corr
    phase_last[c] = phase_now[c]


@njit(cache=True)
def _lookup_offset(serials, offsets_fs, blade_serial, lad, c):
    """The blade's stored one-way offset by serial (config table); the blade's
    absolute one-way delay estimate tau_rt / 2 + offset (fs)."""
    ser = blade_serial[c]
    lad[L_OFFSET_KNOWN, c] = 0
    off = np.int64(0)
    if ser != SERIAL_NONE and ser != SERIAL_UNREPORTED:
        for j in range(serials.shape[0]):
            if serials[j] == ser:
                off = offsets_fs[j]
                lad[L_OFFSET_KNOWN, c] = 1
                break
    lad[L_ONEWAY_FS, c] = (lad[L_TAU_RT_FS, c] >> 1) + off


@njit(cache=True, inline="always")
def aom_phase_codes(ftw, kq16):
    """Round-trip phase codes per tick of a constant tuning word: 2 f_clk T ftw."""
    return aom_codes(np.int64(ftw) << 1, kq16)


@njit(cache=True)
def _apply_beat(lad, aom_off, aom_min, aom_max, kq16, c, beat, limit):
    """Hand a beat to the AOM. beat: free-running phase codes per tick with the
    AOM taken out. What the present AOM offset does not cancel (the
    residual) is what the PZT and spool would have to ramp for; beyond
    `limit` (codes per tick) the total tuning word becomes
    -beat / (2 f_clk T). Returns True if it moved."""
    lad[L_BEAT, c] = beat
    if abs(beat + aom_phase_codes(aom_off[c], kq16)) <= limit:
        return False
    ftw = -(beat << 16) // (2 * kq16)                    # beat < 2**31: 47 bit
    aom_off[c] = np.int32(max(min(ftw, np.int64(aom_max[c])), np.int64(aom_min[c])))
    return True


@njit(cache=True, inline="always")
def _pzt_phase(servo_y, pzt_codes_q16, is_pzt, c):
    """Round-trip phase codes of the present PZT command (0 for the AOM actuator)."""
    if not is_pzt:
        return np.int64(0)
    return (np.int64(servo_y[c]) * pzt_codes_q16 + (1 << 15)) >> 16   # 31 + 27 bit
