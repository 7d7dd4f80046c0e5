"""The bank tick's fast passes against a straightforward reference tick.

`firmware.bank.tick_batch` is written for speed: each stage of the servo
cascade, the steady-lock ladder pass and the PZT actuator pass are split
into short loops over few arrays that LLVM vectorises, and the cascade runs
only the stages the configured servos use. `reference_tick_batch` below is
the tick as first written, one plain loop per pass, every stage of the
config through `biquad_step_at`, the actuators channel by channel through
`shape_step`. Oracle: both, from the same config and state on the same
input, give the same outputs and the same state, array for array, over
workloads that visit every path: a locked bank (the bench's), a noisy one
(losses, holdover, slips, relocks), an AOM bank, the bare servo without the
ladder, blade swaps by serial, actuators mixed per channel, a closed loop
from an empty rack. The trimmed cascade is checked against the same bank
padded back to MAX_STAGES identity stages (what the bank ran before), and
a config swap across stage counts against a padded bank swapped the same way.
Speed itself is measured by `attobus bench --only tick`, never here.
"""
import hashlib
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numba import njit

from firmware import units
from firmware import bank as bank_mod
from firmware.bank import (ACT_AOM, AOM_DROP_BITS, AOM_RING, MAX_STAGES, PZT_DROP_BITS, PZT_MID,
                           ACT_PZT, Bank, BankSettings, BankState, OffloadSettings, _offload,
                           bumpless_rehistory, grow_stages, new_state, pad_stages, tick_batch)
from firmware.biquad import biquad_stage, biquad_step_at
from firmware.calibration import aom_model_step
from firmware.channel_fsm import (EV_LOSS, EV_LOSS_SAT, EV_NONE, MODE_RUN, PASS2_BITS,
                                  SERIAL_UNREPORTED, ladder_slow, servo_error)
from firmware.faults import HOLDOVER, LOCKED, PZT_SAT
from firmware.atan2 import atan2_turns_scalar, log2_floor
from firmware.noise_shaper import shape_step
from firmware.power import return_power
from firmware.servo_build import (LowpassSettings, NotchSettings, ServoSettings,
                                  ZeroIntegratorSettings)
from tools.bench.tick import NCH, locked_bank, synthetic_iq


@njit(cache=True)
def reference_tick_batch(cfg, st, adc_i, adc_q, pzt_out, spool_out, aom_out, blade_serial=None):
    """tick_batch as first written: five plain passes per tick (same signature)."""
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
        # per tick exactly
        for c in range(n):
            i = np.int32(adc_i[t, c])
            q = np.int32(adc_q[t, c])
            power[c] = return_power(i, q)
            ph = atan2_turns_scalar(q, i)
            phase_now[c] = ph
            d = np.int64(ph) - np.int64(phase_last[c]) - pred[c]
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
            for c in range(n):
                over = todo[c] != 0                     # ADC over range (pass 1)
                dev = np.int64(steps[c])
                ok = (chan_state[c] == LOCKED) & (power[c] >= weak_power[c]) & (not over) & \
                    (abs(dev) <= step_detect[c]) & (not slow_tick)
                if blade_serial is not None:
                    b_in = blade_serial[t, c]
                    ok = ok & ((b_in == bserial[c]) | (b_in == SERIAL_UNREPORTED))
                acc0 = phase_acc[c]
                acc = acc0 + dev
                e = servo_error(setpoint[c], acc, err_shift)
                rail = (live[c] & np.uint32(PZT_SAT)) != 0
                f0 = fsm_count[c]
                f = f0 + 1 if ((abs(np.int64(e)) > loss_window[c]) | rail) else np.int32(0)
                phase_acc[c] = acc if ok else acc0
                phase_free[c] += (dev - aom_step[c]) if ok else np.int64(0)
                phase_last[c] = phase_now[c] if ok else phase_last[c]
                err[c] = np.int32(e) if ok else err[c]
                fsm_count[c] = f if ok else f0
                live[c] = (live[c] & ~pass2) if ok else live[c]
                lost = f >= loss_ticks[c]
                todo[c] = np.uint8((0 if not lost else (3 if rail else 2)) if ok else 1) | \
                    (np.uint8(4) if over else np.uint8(0))
            for c in range(n):
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
        # 3. servo cascade, stage by stage
        for c in range(n):
            servo_y[c] = err[c]
        for sg in range(n_stages):
            for c in range(n):
                servo_y[c] = biquad_step_at(active, hist, limits, sg, c, servo_y[c])
        # 4. actuators; the AOM word emitted now is applied `lat` ticks on: keep
        # it in the ring and precompute the model step of the next sample
        slot = k & (AOM_RING - 1)
        nxt = (k + 1 - lat) & (AOM_RING - 1)
        prv = (k - lat) & (AOM_RING - 1)
        for c in range(n):
            y = servo_y[c]
            a = np.int64(aom_off[c]) + np.int64(aom_mod[c])
            if actuator[c] == ACT_PZT:
                code = shape_step(y, PZT_DROP_BITS, ns_c1[c], ns_c2[c], ns_err, c,
                                  -PZT_MID, PZT_MID - 1)
                pzt_code[c] = code + PZT_MID
                sat = abs(np.int64(code)) >= pzt_sat_code[c]
                live[c] = (live[c] & ~np.uint32(PZT_SAT)) | (np.uint32(PZT_SAT) if sat else np.uint32(0))
                if sat:
                    sticky[c] |= np.uint32(PZT_SAT)
                if chan_state[c] == LOCKED:
                    off_sum[c] += y
            else:
                a += shape_step(y, AOM_DROP_BITS, 0, 0, ns_err, c, aom_min[c], aom_max[c])
            a = min(max(a, np.int64(aom_min[c])), np.int64(aom_max[c]))
            aom_ftw[c] = np.int32(a)
            aom_ring[slot, c] = np.int32(a)
            pzt_out[t, c] = pzt_code[c]
            aom_out[t, c] = np.int32(a)
            m = aom_model_step(aom_ring[nxt, c], aom_ring[prv, c], kq16, averaged)
            aom_step[c] = m
            pred[c] = 0 if mode[c] == MODE_RUN else m + vel[c]
        # 5. the spool offload, decimated: every 2**off_shift ticks on the mean PZT command
        if (k & ((np.int64(1) << off_shift) - 1)) == 0:
            _offload(cfg, st)
        for c in range(n):
            spool_out[t, c] = spool_code[c]
        tick_count[0] = k + 1



# ---------------------------------------------------------------- helpers

AMP = 16384
# the servo of tests/test_bank.py (stable on an ideal PZT with one tick of latency)
SERVO2 = ServoSettings(sections=(ZeroIntegratorSettings(gain=0.3, corner_hz=3e3, order=2),
                                 LowpassSettings(f_hz=25e3, q=0.7)))
SERVO3 = ServoSettings(sections=SERVO2.sections + (NotchSettings(f_hz=42e3, q=10.0),))


def fast(**kw):
    """Short detect/lock/loss times and the fastest offload (every 2**7 ticks),
    so a few hundred ticks visit every state and run the spool loop."""
    base = dict(n_channels=6, detect_time_s=2e-5, lock_time_s=1e-4, loss_time_s=5e-5,
                offload=OffloadSettings(decimation_log2=7), calibrate="never",
                settle_time_s=2e-5)
    base.update(kw)
    return BankSettings(**base)


def streams(seed, t, n, noise_turn=2e-4, p_weak=0.02, p_glitch=0.01):
    """A drifting beat per channel with phase noise, weak stretches, ADC
    glitches (some over range) and a few big phase jumps (steps, slips)."""
    rng = np.random.default_rng(seed)
    ph = np.cumsum(rng.normal(0, noise_turn, (t, n)), axis=0) + rng.uniform(0, 1, n)
    jumps = rng.random((t, n)) < 0.002
    ph += np.cumsum(np.where(jumps, rng.uniform(-0.5, 0.5, (t, n)), 0.0), axis=0)
    amp = np.where(rng.random((t, n)) < p_weak, 100.0, AMP)
    i = np.round(amp * np.cos(2 * np.pi * ph)).astype(np.int16)
    q = np.round(amp * np.sin(2 * np.pi * ph)).astype(np.int16)
    g = rng.random((t, n)) < p_glitch
    i[g] = rng.integers(-32768, 32767, g.sum())
    return i, q


def copy_state(s):
    return BankState(*(a.copy() for a in s))


def run_both(cfg, st0, i, q, serial=None, chunk=None):
    """The fast and the reference tick from copies of the same state; returns
    (outputs, states) of each. chunk: ticks per call (default: all in one)."""
    res = []
    for kernel in (tick_batch, reference_tick_batch):
        s = copy_state(st0)
        t, n = i.shape
        out = tuple(np.zeros((t, n), np.int32) for _ in range(3))
        step = chunk or t
        for a in range(0, t, step):
            sl = slice(a, a + step)
            if serial is None:
                kernel(cfg, s, i[sl], q[sl], *(o[sl] for o in out))
            else:
                kernel(cfg, s, i[sl], q[sl], *(o[sl] for o in out), serial[sl])
        res.append((out, s))
    return res


def assert_same(res):
    (out_a, st_a), (out_b, st_b) = res
    for name, x, y in zip(("pzt", "spool", "aom"), out_a, out_b):
        np.testing.assert_array_equal(x, y, err_msg=name)
    for name in BankState._fields:
        np.testing.assert_array_equal(getattr(st_a, name), getattr(st_b, name), err_msg=name)


def locked(settings, n_ticks=None):
    """A bank locked on noise-free beats (the bench's start)."""
    bank = Bank(settings)
    n = settings.n_channels
    t = n_ticks or int(round((settings.detect_time_s + settings.lock_time_s + 1e-3)
                             * settings.loop_rate_hz))
    i, q = streams(99, t, n, noise_turn=0.0, p_weak=0.0, p_glitch=0.0)
    out = tuple(np.zeros((t, n), np.int32) for _ in range(3))
    tick_batch(bank.config, bank.state, i, q, *out)
    return bank


# ---------------------------------------------------------------- fast tick == reference tick

def test_locked_bank_the_bench_workload():
    """The bench's workload (tools.bench.tick): 40 channels locked on their
    noise-free beats (default settings: 3-stage servo, notch shaper,
    decimated offload), then white phase noise; in one call and in chunks."""
    bank = locked_bank(BankSettings(n_channels=NCH))
    assert np.all(bank.state.chan_state == LOCKED)
    i, q = synthetic_iq(600)
    res = run_both(bank.config, bank.state, i, q)
    assert_same(res)
    assert np.all(res[0][1].chan_state == LOCKED)
    assert_same(run_both(bank.config, bank.state, i, q, chunk=7))


@pytest.mark.parametrize("actuator", ["pzt", "aom"])
def test_noisy_bank_every_state(actuator):
    """From an empty rack through detection, lock, losses, holdover and
    relock, weak returns and over-range samples, in chunks of 50 ticks (the
    slow path at chunk starts included)."""
    cfg = fast(actuator=actuator, servo=SERVO2).build()
    i, q = streams(3, 1500, 6, noise_turn=3e-3)
    res = run_both(cfg, new_state(cfg), i, q, chunk=50)
    assert_same(res)
    s = res[0][1]
    assert LOCKED in s.chan_state or HOLDOVER in s.chan_state
    assert np.any(s.faults_sticky != 0) and np.any(s.relock_count + s.slip_count > 0)


def test_bare_servo_without_ladder():
    """state_machine=False, every channel in RUN: the cascade and the
    actuators on a free-running beat that drives some outputs to a rail."""
    settings = fast(state_machine=False, n_channels=9)
    cfg = settings.build()
    s0 = new_state(cfg)
    s0.active[:] = cfg.coeffs
    s0.mode[:] = MODE_RUN
    i, q = streams(4, 800, 9, noise_turn=2e-2)
    res = run_both(cfg, s0, i, q)
    assert_same(res)
    assert np.any(res[0][0][0] == 0) or np.any(res[0][0][0] == 2 * PZT_MID - 1)


def test_blade_serials_swap_mid_run():
    """The board's serial report: blades pulled and replaced (serial 0, then
    a new one) on some channels, SERIAL_UNREPORTED on others."""
    cfg = fast(servo=SERVO2).build()
    t, n = 1200, 6
    i, q = streams(5, t, n, noise_turn=1e-3)
    serial = np.tile(np.arange(1, n + 1, dtype=np.uint64) * 1000, (t, 1))
    serial[400:600, 1] = 0
    serial[600:, 1] = 77
    serial[700:, 3] = 0
    serial[:, 5] = SERIAL_UNREPORTED
    assert_same(run_both(cfg, new_state(cfg), i, q, serial=serial, chunk=100))


def test_actuators_mixed_per_channel():
    """A hand-made config with PZT and AOM channels in one bank takes the
    general actuator loop."""
    cfg = fast(servo=SERVO2).build()
    aom = fast(servo=SERVO2, actuator="aom").build()
    cfg = cfg._replace(actuator=cfg.actuator.copy())
    cfg.actuator[1::2] = ACT_AOM
    for f in ("coeffs", "limits"):
        getattr(cfg, f)[..., 1::2] = getattr(aom, f)[..., 1::2]
    i, q = streams(6, 800, 6, noise_turn=1e-3)
    assert_same(run_both(cfg, new_state(cfg), i, q, chunk=100))


def test_closed_loop_from_empty_rack():
    """An ideal PZT with one tick of latency closing the loop (the fast and
    the reference bank each on its own plant): detection, lock and the
    servo's own output fed back, step by step through `tick`-sized calls."""
    settings = fast(servo=SERVO2, n_channels=4)
    cfg = settings.build()
    rng = np.random.default_rng(7)
    t = 1500
    dist = np.cumsum(rng.normal(0, 5e-19, (t, 4)), axis=0) + rng.uniform(0, 2e-15, 4)
    outs = []
    for kernel in (tick_batch, reference_tick_batch):
        s = new_state(cfg)
        act = np.zeros(4)
        rec = np.zeros((t, 4), np.int32)
        for k in range(t):
            ang = 2 * np.pi * (dist[k] + act) / units.ONEWAY_S_PER_TURN
            i = np.round(AMP * np.cos(ang)).astype(np.int16)[None, :]
            q = np.round(AMP * np.sin(ang)).astype(np.int16)[None, :]
            o = tuple(np.zeros((1, 4), np.int32) for _ in range(3))
            kernel(cfg, s, i, q, *o)
            rec[k] = o[0][0]
            act = (o[0][0] - PZT_MID) * (2 * 2e-12 / 2**20)
        outs.append((rec, s))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    for name in BankState._fields:
        np.testing.assert_array_equal(getattr(outs[0][1], name), getattr(outs[1][1], name),
                                      err_msg=name)
    assert np.all(outs[0][1].chan_state == LOCKED)


# ---------------------------------------------------------------- stage trimming

def test_stage_count_is_the_longest_servo():
    assert BankSettings().build().coeffs.shape[0] == 3                  # default servo
    assert fast(servo=SERVO2).build().coeffs.shape[0] == 2
    cfg = fast(n_channels=3, servo=(SERVO2, SERVO3, SERVO2)).build()
    assert cfg.coeffs.shape[0] == 3 and new_state(cfg).hist.shape == (3, 4, 3)
    one = ServoSettings(sections=(ZeroIntegratorSettings(gain=0.3, corner_hz=3e3, order=1),))
    assert fast(servo=one).build().coeffs.shape[0] == 1


@pytest.mark.parametrize("servo", [SERVO2, (SERVO2, SERVO3, SERVO2, SERVO3, SERVO2, SERVO3)],
                         ids=["2-stage", "mixed"])
def test_trimmed_cascade_equals_padded(servo):
    """The tick on the trimmed stages gives what the same bank padded to
    MAX_STAGES with identity stages (the cascade as it ran before the trim)
    gives, through every state: HOLD and PARK load the hold set into every
    stage, and parking moves the last stage's output history, which is the
    bank's output either way."""
    cfg = fast(servo=servo).build()
    padded = pad_stages(cfg, MAX_STAGES)
    assert padded.coeffs.shape[0] == MAX_STAGES > cfg.coeffs.shape[0]
    i, q = streams(8, 1500, 6, noise_turn=3e-3)
    serial = np.tile(np.arange(1, 7, dtype=np.uint64), (1500, 1))
    serial[500:700, 2] = 0                          # a blade out: EMPTY, PARK, then back
    outs = []
    for c in (cfg, padded):
        s = new_state(c)
        o = tuple(np.zeros((1500, 6), np.int32) for _ in range(3))
        for a in range(0, 1500, 100):
            reference_tick_batch(c, s, i[a:a + 100], q[a:a + 100], *(x[a:a + 100] for x in o),
                                 serial[a:a + 100])
        outs.append((o, s))
    for x, y in zip(outs[0][0], outs[1][0]):
        np.testing.assert_array_equal(x, y)
    for name in BankState._fields:
        if name not in ("hist", "active"):
            np.testing.assert_array_equal(getattr(outs[0][1], name), getattr(outs[1][1], name),
                                          err_msg=name)
    assert outs[0][0][0][690, 2] == PZT_MID                  # the pulled blade's PZT parked
    assert np.any(outs[0][1].chan_state == LOCKED)


def _swap_run(kernel_cfgs, i, q, swap_at):
    """Run a Bank over i, q with swap_config at swap_at; returns PZT codes."""
    bank = Bank(kernel_cfgs[0])
    rec = np.zeros(i.shape, np.int32)
    for k in range(i.shape[0]):
        if k == swap_at:
            bank.swap_config(kernel_cfgs[1])
        rec[k] = bank.step(i[k], q[k])[0]
    return rec, bank


@pytest.mark.parametrize("first, second", [(SERVO2, SERVO3), (SERVO3, SERVO2)],
                         ids=["grow", "shrink"])
def test_swap_across_stage_counts_equals_padded(first, second):
    """Bank.swap_config between servos with different section counts: the
    same outputs as the bank padded to MAX_STAGES throughout (how every
    swap ran before the trim), and the state grows (2 -> 3 stages) or keeps
    its stages (3 -> 2: the new config is padded)."""
    t, swap = 900, 500
    i, q = streams(9, t, 6, noise_turn=2e-5, p_weak=0.0, p_glitch=0.0)
    codes, bank = _swap_run((fast(servo=first), fast(servo=second)), i, q, swap)
    assert bank.state.hist.shape[0] == 3 and bank.config.coeffs.shape[0] == 3
    # the reference: padded configs and state from the start, the same swap by hand
    c0 = pad_stages(fast(servo=first).build(), MAX_STAGES)
    c1 = pad_stages(fast(servo=second).build(), MAX_STAGES)
    s = new_state(c0)
    ref = np.zeros((t, 6), np.int32)
    for k in range(t):
        if k == swap:
            bumpless_rehistory(c0, c1, s)
            c0 = c1
        o = tuple(np.zeros((1, 6), np.int32) for _ in range(3))
        reference_tick_batch(c0, s, i[k:k + 1], q[k:k + 1], *o)
        ref[k] = o[0][0]
    np.testing.assert_array_equal(codes, ref)
    assert np.all(bank.state.chan_state == LOCKED)


def test_grow_and_pad_refuse_and_rehistory_checks_shapes():
    cfg = fast(servo=SERVO2).build()
    st_ = new_state(cfg)
    with pytest.raises(ValueError, match="stage counts differ"):
        bumpless_rehistory(cfg, pad_stages(cfg, 3), st_)
    with pytest.raises(ValueError, match="cannot pad"):
        pad_stages(pad_stages(cfg, 3), 2)
    with pytest.raises(ValueError, match="cannot grow"):
        grow_stages(cfg, st_, MAX_STAGES + 1)
    assert pad_stages(cfg, 2) is cfg and grow_stages(cfg, st_, 2) is st_
    grown = grow_stages(cfg, st_, 4)
    assert grown.hist.shape == (4, 4, 6) and grown.phase_acc is st_.phase_acc


# ---------------------------------------------------------------- the vectorised stage

@njit(cache=True)
def _stage_ref(coeffs, hist, limits, sg, x, y):
    for c in range(x.shape[0]):
        y[c] = biquad_step_at(coeffs, hist, limits, sg, c, x[c])


@njit(cache=True)
def _stage_fast(coeffs, hist, limits, sg, x, y):
    biquad_stage(coeffs[sg], hist[sg], limits[sg], x, y, x.shape[0])


@settings(max_examples=60)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 19), sg=st.integers(0, 2))
def test_biquad_stage_equals_biquad_step_at(seed, n, sg):
    """Random coefficients inside the accumulator budget (|c| < 2**31 / 5
    each), random int32 histories, inputs and rails; the rows of stage sg
    only change, and the same way."""
    rng = np.random.default_rng(seed)
    coeffs = rng.integers(-2**31 // 5, 2**31 // 5, (3, 5, n)).astype(np.int32)
    hist = rng.integers(-2**31, 2**31 - 1, (3, 4, n), endpoint=True).astype(np.int32)
    lo = rng.integers(-2**31, 0, (3, n))
    limits = np.stack([lo, lo + rng.integers(0, 2**31, (3, n))], axis=1).astype(np.int32)
    x = rng.integers(-2**31, 2**31 - 1, n, endpoint=True).astype(np.int32)
    h_ref, y_ref = hist.copy(), np.zeros(n, np.int32)
    _stage_ref(coeffs, h_ref, limits, sg, x, y_ref)
    y = np.zeros(n, np.int32)
    _stage_fast(coeffs, hist, limits, sg, x, y)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(hist, h_ref)
    # in place (x_in is y_out), as the tick runs every stage after the first
    yy = y.copy()
    _stage_fast(coeffs, hist, limits, sg, yy, yy)
    y2 = np.zeros(n, np.int32)
    _stage_ref(coeffs, h_ref, limits, sg, y.copy(), y2)
    np.testing.assert_array_equal(yy, y2)
    np.testing.assert_array_equal(hist, h_ref)


def test_tick_cache_stamp_covers_the_inlined_primitives():
    """numba's on-disk cache keys tick_batch on bank.py alone, but atan2,
    return_power, biquad_stage and shape_core are compiled into it: their
    digest in bank.py must be current, or an edit of one of them would run
    a stale compiled tick."""
    root = pathlib.Path(__file__).resolve().parents[1]
    h = hashlib.sha1()
    for f in ("firmware/atan2.py", "firmware/power.py", "firmware/biquad.py",
              "firmware/noise_shaper.py"):
        h.update((root / f).read_bytes())
    assert bank_mod.KERNEL_SOURCES_SHA1 == h.hexdigest()[:16]


# ---------------------------------------------------------------- atan2's leading-zero count

@njit(cache=True)
def _log2_floor_jit(v):
    out = np.empty(v.shape[0], np.int64)
    for k in range(v.shape[0]):
        out[k] = log2_floor(v[k])
    return out


def test_log2_floor_jit_equals_bit_length():
    """The float64-exponent count against int.bit_length() - 1 at every power
    of two and its neighbours up to 2**53 (where a rounding conversion
    would show first), plus random values; outside [1, 2**53) the Python
    form refuses."""
    v = []
    for e in range(53):
        v += [(1 << e) - 1, 1 << e, (1 << e) + 1]
    v += list(np.random.default_rng(2).integers(1, 2**53, 2000))
    v = np.array([x for x in v if 1 <= x < 2**53], np.int64)
    np.testing.assert_array_equal(_log2_floor_jit(v), [int(x).bit_length() - 1 for x in v])
    assert [log2_floor(x) for x in (1, 2, 3, 2**31 - 1, 2**31)] == [0, 1, 1, 30, 31]
    for bad in (0, -1, 2**53):
        with pytest.raises(OverflowError):
            log2_floor(bad)
