"""firmware.calibration: round-trip delay from AOM Thue-Morse steps.

Oracles: the Thue-Morse sequence by popcount parity and its polynomial
moments (numpy); the lumped front-end formula of the AOM phase (the rig's
documented model, written here in float); the estimator's own float model
for synthetic data with known tau_rt; and the rig's tau_rt of every blade
(sim_hw truth), calibrated by the bank through the fused co-simulation.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from firmware.bank import BankSettings
from firmware.calibration import (CAL_DISAGREE, CAL_NOISY, CAL_OK, CAL_RANGE, CAL_ROWS, CAL_TOO_FEW,
                                  TM_CHIPS, aom_codes, aom_model_step, cal_accumulate, cal_drive, cal_finish,
                                  tm_sign)
from firmware.faults import CAL_FAILED, FLAG_BITS, LOCKED
from sim_hw.scenarios import get_scenario
from tools import runner

F_CLK = 1e9
T = 1e-5
KQ16 = int(round(F_CLK * T * 65536))


@settings(max_examples=300)
@given(f2=st.integers(-(2**32), 2**32), kq16=st.integers(0, 2**46 - 1))
def test_aom_codes_is_the_exactly_rounded_product(f2, kq16):
    """round-half-up(f2 kq16 / 2**16) in Python integers, over the whole budget
    (tuning-word sums to 2**32, f_clk T to 2**30: loop rates down to 1 Hz)."""
    exact = (f2 * kq16 + (1 << 15)) >> 16
    assert aom_codes(np.int64(f2), np.int64(kq16)) == exact
    assert aom_codes.py_func(np.int64(f2), np.int64(kq16)) == exact


@pytest.mark.parametrize("rate_hz", [200.0, 2.5e3, 10e3])
def test_bank_builds_at_link_loop_rates_with_the_full_aom_range(rate_hz):
    """Slow loops (a serial link's frame rate, longhaul's 10 kHz) with the 1 GHz
    DDS and the default 1 MHz AOM range: the model no longer limits the rate."""
    cfg = BankSettings(n_channels=2, loop_rate_hz=rate_hz, noise_shaper="first").build()
    assert cfg.aom_kq16 == round(F_CLK / rate_hz * 65536)


def test_tm_sign_is_thue_morse_and_cancels_quadratics():
    seq = np.array([tm_sign(k) for k in range(16)])
    parity = np.array([bin(k & 7).count("1") & 1 for k in range(16)])
    np.testing.assert_array_equal(seq, 1 - 2 * parity)
    t = np.arange(8.0)
    for p in (0, 1, 2):
        assert np.dot(seq[:8], t ** p) == 0          # a drift of degree <= 2 does not leak
    assert np.dot(seq[:8], t ** 3) != 0


def test_cal_drive_layout():
    chip, every, n_per, a, b = 2, 4, 8, 100, 400
    v = np.arange(-3, n_per * TM_CHIPS * chip + 5)
    f = np.array([cal_drive(x, chip, every, n_per, a, b) for x in v])
    assert np.all(f[v < 0] == 0) and np.all(f[v >= n_per * TM_CHIPS * chip] == 0)
    inside = (v >= 0) & (v < n_per * TM_CHIPS * chip)
    period = v[inside] // (TM_CHIPS * chip)
    amp = np.abs(f[inside])
    np.testing.assert_array_equal(amp, np.where(period % every == 0, a, b))
    chips = v[inside] // chip
    np.testing.assert_array_equal(np.sign(f[inside]), [tm_sign(k) for k in chips])


@pytest.mark.parametrize("f_now, f_prev", [(0, 0), (1000, 0), (-53687, 53687), (2**30, 2**30 - 7),
                                           (-(2**31), -(2**31))])
def test_aom_model_step_matches_the_float_formula(f_now, f_prev):
    """2 Phi_avg_j - 2 Phi_avg_{j-1} = (df_j + df_{j-1}) T turns, df = ftw f_clk / 2**32."""
    turns = (f_now + f_prev) * F_CLK / 2**32 * T
    assert aom_model_step(f_now, f_prev, KQ16, True) == round(turns * 2**32)
    assert aom_model_step(f_now, f_prev, KQ16, False) == round(2 * f_prev * F_CLK / 2**32 * T * 2**32)
    assert aom_model_step.py_func(f_now, f_prev, KQ16, True) == aom_model_step(f_now, f_prev, KQ16, True)


def synthetic(tau_s, n_periods=64, chip=1, skip=0, every=8, a_small=5000, a_large=20000,
              drift=(0.0, 0.0, 0.0), noise_codes=0.0, seed=0):
    """Accumulate y_v = -f_v u + (f_v - f_{v-1}) u^2 / (2 T f_clk) + drift + noise
    (u = f_clk tau codes per ftw: the lumped model, transient included)."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((CAL_ROWS, 1), np.int64)
    u = F_CLK * tau_s
    total = n_periods * TM_CHIPS * chip
    f_prev = 0
    for v in range(total):
        f = cal_drive(v, chip, every, n_periods, a_small, a_large)
        y = -f * u + (f - f_prev) * u * u / (2 * T * F_CLK) + drift[0] + drift[1] * v + drift[2] * v * v
        y += noise_codes * rng.standard_normal()
        cal_accumulate(acc, 0, v, np.int64(round(y)), f, f_prev, chip, skip, every)
        f_prev = f
    return acc


@settings(max_examples=40)
@given(tau=st.floats(5e-9, 4.9e-6), c0=st.floats(-1e9, 1e9), c1=st.floats(-2e7, 2e7),
       c2=st.floats(-1e3, 1e3))
def test_estimator_recovers_tau_under_quadratic_drift(tau, c0, c1, c2):
    """Noise-free lumped model with any drift of degree 2: tau to 1e-4 (the
    transient term is solved for, the drift cancels exactly); beat = c1 + c2 (...)."""
    acc = synthetic(tau, drift=(c0, c1, c2))
    est, sig, beat, status = cal_finish(acc, 0, 1, 5000.0, 20000.0, T, F_CLK, 0.01, 50e-12,
                                        5e-6, 2.0, 1, 4.0)
    assert status == CAL_OK
    assert abs(est - tau) <= 1e-4 * tau + 2e-12
    # drift of the period means between the first and last period, codes per
    # tick; the front end's transient term (the step from the small to the
    # large amplitude) leaks at most 2 a_large u^2 / (2 T f_clk) per period
    # sum: 1.2e4 codes per tick (0.3 Hz) at 4.9 us
    u = F_CLK * tau
    leak = 2 * 20000 * u * u / (2 * T * F_CLK) / (8 * 63 * 8)
    mid = lambda p: c1 * (p * 8 + 3.5) + c2 * np.mean((p * 8 + np.arange(8.0)) ** 2)
    assert abs(beat - (mid(63) - mid(0)) / (63 * 8)) <= 1e-6 * abs(c1) + leak + 1


def test_estimator_long_link_chips_skip_the_transit():
    """Chips longer than tau_rt with the first ticks dropped: only settled
    samples count, R2 = 0, the plain slope."""
    tau = 1e-3                                           # 100 ticks at 10 us
    chip, skip = 103, 102
    acc = np.zeros((CAL_ROWS, 1), np.int64)
    u = F_CLK * tau
    f_hist = []
    for v in range(16 * TM_CHIPS * chip):
        f = cal_drive(v, chip, 8, 16, 500, 2000)
        f_hist.append(f)
        # the round trip sees the step after tau: y = -(integral of df over the last tau)
        lo = max(0, v - 99)
        y = -sum(f_hist[lo:v + 1]) * F_CLK * T
        cal_accumulate(acc, 0, v, np.int64(round(y)), f, f_hist[v - 1] if v else 0, chip, skip, 8)
    est, _, _, status = cal_finish(acc, 0, chip - skip, 500.0, 2000.0, T, F_CLK, 0.01, 50e-12,
                                   2e-3, 2.0, chip, 4.0)
    assert status == CAL_OK and abs(est - tau) < 1e-4 * tau


def test_estimator_flags_inconsistent_data():
    """Too few periods, an impossible tau, noise beyond the tolerance, and a
    large step that disagrees with the small one (a turn lost on it)."""
    args = (T, F_CLK, 0.01, 50e-12, 5e-6, 2.0, 1, 4.0)
    acc = synthetic(300e-9, n_periods=8)                 # one small-step period only
    assert cal_finish(acc, 0, 1, 5000.0, 20000.0, *args)[3] == CAL_TOO_FEW
    acc = synthetic(-50e-9)
    assert cal_finish(acc, 0, 1, 5000.0, 20000.0, *args)[3] == CAL_RANGE
    acc = synthetic(300e-9, noise_codes=5e6)
    assert cal_finish(acc, 0, 1, 5000.0, 20000.0, *args)[3] == CAL_NOISY
    # the small step's response 10 % off the large one's (a non-linear AOM)
    from firmware.calibration import CAL_N1, CAL_S0, CAL_S1
    acc = synthetic(300e-9)
    acc_bad = acc.copy()
    acc_bad[CAL_S0, 0] = int(acc[CAL_S0, 0] * 1.1)
    assert cal_finish(acc_bad, 0, 1, 5000.0, 20000.0, *args)[3] == CAL_DISAGREE
    # a whole turn lost on every chip of the large step (8 turns a period):
    # tau_rt moves by 2**32 / (a_large f_clk) = 215 us, far outside
    acc_bad = acc.copy()
    acc_bad[CAL_S1, 0] += acc_bad[CAL_N1, 0] * 8 * 2**32
    assert cal_finish(acc_bad, 0, 1, 5000.0, 20000.0, *args)[3] in (CAL_RANGE, CAL_DISAGREE)


# ---------------------------------------------------------------- against the rig

class Grab:
    """Runner event that keeps the rig state and the bank of a run."""
    def __call__(self, rig_cfg, rig_st, bank):
        self.rig_st, self.bank = rig_st, bank


def calibrate_on_rig(scenario, n, seed, seconds=0.045, settings=None, events=()):
    g = Grab()
    res, rec = runner.run_fused(scenario, seconds, n, seed, bank_settings=settings,
                                events=[(0.0, g), *events])
    return g, res, rec


@pytest.mark.parametrize("name, seed", [("rack50", 1), ("rack50", 7), ("rack10", 3)])
def test_round_trip_delay_within_one_percent_or_50_ps(name, seed):
    """Every blade's tau_rt from its calibration within max(1 %, 50 ps) of the
    rig's truth; its stated sigma honest (error within 4 sigma); the channel
    then locks."""
    scen = get_scenario(name)
    g, res, rec = calibrate_on_rig(scen, 4, seed, 0.05)
    rep = g.bank.report()
    for c in range(4):
        true = g.rig_st.tau_rt_s[c]
        est, sig = rep[c]["tau_rt_s"], rep[c]["tau_rt_sigma_s"]
        assert est is not None, rep[c]
        assert abs(est - true) <= max(0.01 * true, 50e-12), (c, est, true)
        assert abs(est - true) <= 4 * sig + 20e-12
        assert rep[c]["state"] == "LOCKED"


def test_blade_offset_looked_up_by_serial():
    """The one-way offset stored for a blade's serial (BankSettings.blade_offsets)
    gives its absolute one-way delay tau_rt / 2 + offset; an unknown serial
    says so (offset_known False) and reports tau_rt / 2."""
    scen = get_scenario("rack50")
    from sim_hw.rig import build_rig
    _, st0 = build_rig(scen, 2, 11)
    known = int(st0.blade_serial[0])
    off = float(st0.blade_oneway_offset_s[0])
    s = runner.default_bank_settings(scen, 2)
    from dataclasses import replace
    s = replace(s, blade_offsets={known: off})
    g, res, rec = calibrate_on_rig(scen, 2, 11, 0.045, settings=s)
    rep = g.bank.report()
    assert rep[0]["offset_known"] and not rep[1]["offset_known"]
    truth0 = g.rig_st.tau_s[0] + off                     # sim_hw.rig.static_oneway_s
    # tau_rt within max(1 %, 50 ps) -> the one-way estimate within half of that
    assert abs(rep[0]["oneway_s"] - truth0) <= max(0.01 * g.rig_st.tau_s[0], 25e-12)
    assert abs(rep[1]["oneway_s"] - g.rig_st.tau_s[1]) <= max(0.01 * g.rig_st.tau_s[1], 25e-12)


def test_cal_failed_on_a_glitch_then_retried():
    """An ADC glitch during the calibration: CAL_FAILED (live in FAULT, sticky),
    then the back-off retries and the second calibration locks the channel."""
    from tools.inject import parse_inject
    scen = get_scenario("rack50")
    ev = parse_inject("adc_glitch ch=1 t=20ms dur=50us", 2, 0.2)
    g, res, rec = calibrate_on_rig(scen, 2, 5, 0.15, events=ev)
    f = rec.faults[:, 1]
    k_fail = np.flatnonzero(f & FLAG_BITS["CAL_FAILED"])
    assert k_fail.size and 2000 <= k_fail[0] <= 2010
    assert not np.any(rec.faults[:, 0] & FLAG_BITS["CAL_FAILED"])
    assert rec.state[-1, 1] == LOCKED and g.bank.report()[1]["faults"] == 1
    est = g.bank.report()[1]["tau_rt_s"]
    assert abs(est - g.rig_st.tau_rt_s[1]) <= 0.01 * g.rig_st.tau_rt_s[1]


def test_calibration_settings_refused():
    for kw, field in [(dict(cal_step_turns=(0.3, 0.2)), "cal_step_turns"),
                      (dict(cal_step_turns=(0.1, 0.6)), "cal_step_turns"),
                      (dict(cal_step_turns=0.3), "cal_step_turns"),
                      (dict(cal_tolerance=0.0), "cal_tolerance"),
                      (dict(cal_skip_s=1e-5), "cal_skip_s"),
                      (dict(calibrate="yes"), "calibrate"),
                      (dict(cal_small_every=1), "cal_small_every"),
                      (dict(aom_latency_ticks=0), "aom_latency_ticks"),
                      (dict(blade_offsets={5: float("nan")}), "blade_offsets"),
                      (dict(aom_clock_hz=1e15), "aom_clock_hz")]:
        with pytest.raises(ValueError, match=field):
            BankSettings(n_channels=2, **kw).build()
