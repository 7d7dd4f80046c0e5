"""The simulated rig (sim_hw.rig) against independent oracles: scipy models of
the actuators, the scenarios' analytic PSDs, the self-heterodyne formula."""
import math

import numpy as np
import pytest
from scipy import signal

from sim_hw import constants as C
from sim_hw.rig import (apply_fault, build_rig, insert_blade, remove_blade, rig_run,
                        rig_step, static_oneway_s)
from sim_hw.scenarios import draw_blade, get_scenario

T_OPT = C.OPTICAL_PERIOD_S


def _mid(cfg):
    N = cfg.n_channels
    return (np.full(N, cfg.pzt_mid, np.int32), np.full(N, cfg.spool_mid, np.int32),
            np.zeros(N, np.int32))


def _steps(cfg, st, n, codes=None):
    """n calls of rig_step; codes(k) -> (pzt, spool, aom) or mid-scale."""
    N = cfg.n_channels
    ai = np.zeros((n, N), np.int16)
    aq = np.zeros((n, N), np.int16)
    tr = np.zeros((n, N))
    mid = _mid(cfg)
    for k in range(n):
        pz, sp, ao = codes(k) if codes else mid
        rig_step(cfg, st, pz, sp, ao, ai[k], aq[k], tr[k])
    return ai, aq, tr


def _phase_turns(ai, aq):
    """Unwrapped measured round-trip phase (turns), numpy oracle."""
    return np.unwrap(np.arctan2(aq.astype(float), ai.astype(float)), axis=0) / (2 * np.pi)


def _quiet(name="rack10", **kw):
    """A scenario without disturbances: actuator responses alone."""
    s = get_scenario(name).replace(acoustic_rms_s=0.0, temp_ramp_k_per_s=0.0,
                                   temp_rw_k_per_sqrt_s=0.0, laser_linewidth_hz=0.0)
    return s.replace(**kw) if kw else s


# --------------------------------------------------------------- constants

def test_constants_agree_with_firmware_units():
    from firmware import units
    assert C.ONEWAY_S_PER_TURN == units.ONEWAY_S_PER_TURN
    assert C.OPTICAL_PERIOD_S == units.OPTICAL_PERIOD_S
    assert C.ONEWAY_S_PER_TURN == pytest.approx(2.5852e-15, rel=1e-4)


# ----------------------------------------------------------- determinism

def test_deterministic_per_seed_and_channel():
    n = 3000
    cfg, st = build_rig("rack10", 40, 3)
    a = rig_run(cfg, st, *_mid(cfg), n)
    cfg, st = build_rig("rack10", 40, 3)
    b = rig_run(cfg, st, *_mid(cfg), n)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # a 4-channel rig is the first four channels of the 40-channel one
    cfg4, st4 = build_rig("rack10", 4, 3)
    c = rig_run(cfg4, st4, *_mid(cfg4), n)
    for x, y in zip(a, c):
        np.testing.assert_array_equal(x[:, :4], y)
    # another seed: other blades, other noise
    cfg5, st5 = build_rig("rack10", 4, 4)
    d = rig_run(cfg5, st5, *_mid(cfg5), n)
    assert not np.array_equal(c[2], d[2])
    assert not np.array_equal(st4.length_m, st5.length_m)
    assert len(set(st.blade_serial.tolist())) == 40


def test_long_links_deterministic_and_channel_independent():
    cfg, st = build_rig("longhaul", 4, 3)
    a = rig_run(cfg, st, *_mid(cfg), 300)
    cfg, st = build_rig("longhaul", 4, 3)
    b = rig_run(cfg, st, *_mid(cfg), 300)
    cfg, st = build_rig("longhaul", 2, 3)
    c = rig_run(cfg, st, *_mid(cfg), 300)
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x[:, :2], z)


def test_batch_and_stepwise_identical():
    """rig_run (one jitted loop) and rig_step called tick by tick from Python
    give the same numbers and leave the same state."""
    n, N = 1500, 6
    cfg, st = build_rig("rack50", N, 9)
    ref = rig_run(cfg, st, *_mid(cfg), n)
    cfg2, st2 = build_rig("rack50", N, 9)
    steps = _steps(cfg2, st2, n)
    for x, y in zip(ref, steps):
        np.testing.assert_array_equal(x, y)
    for f in st._fields:
        np.testing.assert_array_equal(getattr(st, f), getattr(st2, f), err_msg=f)


def test_build_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rack10"):
        build_rig("rack11", 4, 0)
    with pytest.raises(ValueError, match="n_channels"):
        build_rig("rack10", 41, 0)
    with pytest.raises(ValueError, match="n_channels"):
        build_rig("longhaul", 5, 0)
    with pytest.raises(ValueError, match="loop_rate_hz"):
        build_rig("rack10", 4, 0, loop_rate_hz=0.0)
    with pytest.raises(ValueError, match="dac_latency_ticks"):
        build_rig(get_scenario("rack10").replace(dac_latency_ticks=2), 4, 0)


# ------------------------------------------------------ free-running PSD

@pytest.mark.parametrize("name", ["rack10", "rack50"])
def test_free_running_psd_and_rms(name):
    s = get_scenario(name)
    cfg, st = build_rig(s, 4, 7)
    _, _, tr = rig_run(cfg, st, *_mid(cfg), 1_000_000)          # 10 s
    f, P = signal.welch(tr.T, fs=cfg.loop_rate_hz, nperseg=2 ** 16, detrend="linear")
    L = st.length_m
    f, P = f[1:], P[:, 1:]
    ratio = np.mean(P / s.fibre_psd_s2_per_hz(f[None, :], L[:, None]), axis=0)
    edges = np.logspace(1, np.log10(2000), 12)
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (f >= lo) & (f < hi)
        db = 10 * np.log10(ratio[m].mean())
        assert abs(db) < 1.0, (lo, hi, db)
    band = (f >= s.acoustic_band_lo_hz) & (f <= s.acoustic_band_hi_hz)
    rms = np.sqrt(np.trapezoid(P[:, band], f[band], axis=1))
    np.testing.assert_allclose(rms, s.acoustic_rms_at_s(L), rtol=0.2)
    expect = np.sqrt([np.trapezoid(s.fibre_psd_s2_per_hz(f[band], x), f[band]) for x in L])
    np.testing.assert_allclose(rms, expect, rtol=0.1)


# ------------------------------------------------------------- actuators

def _fine_response(A, B, u_of_t, t_end, T, sub=400):
    """Reference: scipy's ZOH-discretised model on a fine grid -> per-tick
    (average, end value) of the output x[0]."""
    dt = T / sub
    sysd = signal.cont2discrete((A, B.reshape(-1, 1), np.eye(len(B))[:1], [[0.0]]), dt,
                                method="zoh")
    Ad, Bd = sysd[0], sysd[1][:, 0]
    n = int(round(t_end / T))
    x = np.zeros(len(B))
    avg = np.zeros(n)
    end = np.zeros(n)
    for k in range(n):
        u = u_of_t(k)
        xs = [x[0]]
        for _ in range(sub):
            x = Ad @ x + Bd * u
            xs.append(x[0])
        avg[k] = np.trapezoid(xs, dx=1.0) / sub
        end[k] = x[0]
    return avg, end


def test_pzt_step_response_against_scipy_resonance():
    s = _quiet()
    cfg, st = build_rig(s, 2, 1)
    step = 100_000
    j0 = 5
    pz, sp, ao = _mid(cfg)
    def codes(k):
        p = pz.copy()
        if k >= j0:
            p[0] += step
        return p, sp, ao
    n = 60
    _, _, tr = _steps(cfg, st, n, codes)
    T = cfg.tick_s
    g = step * s.pzt_s_per_code
    np.testing.assert_array_equal(tr[: j0 + 1, 0], 0.0)       # latched: no effect yet
    assert tr[j0 + 1, 0] != 0.0
    w0, Q = 2 * np.pi * s.pzt_resonance_hz, s.pzt_q
    A = np.array([[0.0, 1.0], [-w0 * w0, -w0 / Q]])
    B = np.array([0.0, w0 * w0])
    u = lambda k: g if k >= j0 + 1 else 0.0
    avg, end = _fine_response(A, B, u, n * T, T)
    start = np.concatenate([[0.0], end[:-1]])
    tau = st.tau_s[0]
    expect = avg - tau * (end - start) / T       # forward sees c(t - tau)
    assert np.max(np.abs(tr[:, 0] - expect)) < 2e-5 * g
    # the ring is really the 30 kHz Q 10 one: a 27 kHz model is far off
    w1 = 2 * np.pi * 27e3
    avg1, _ = _fine_response(np.array([[0.0, 1.0], [-w1 * w1, -w1 / Q]]),
                             np.array([0.0, w1 * w1]), u, n * T, T)
    assert np.max(np.abs(tr[:, 0] - avg1)) > 2e-2 * g
    # after the ring-down: exactly the commanded step
    assert tr[-1, 0] == pytest.approx(g, rel=1e-9)
    np.testing.assert_array_equal(tr[:, 1], 0.0)               # other channel untouched


@pytest.mark.parametrize("tau_s", [30.0, 2e-3])
def test_spool_first_order(tau_s):
    s = _quiet(spool_tau_s=tau_s)
    cfg, st = build_rig(s, 1, 2)
    step = 1000
    pz, sp, ao = _mid(cfg)
    sp = sp + step
    n = 2000
    _, _, tr = _steps(cfg, st, n, lambda k: (pz, sp, ao))
    T = cfg.tick_s
    g = step * s.spool_s_per_code
    t0 = np.arange(n) * T - T                 # applied from the second call on
    t1 = t0 + T
    t0c, t1c = np.maximum(t0, 0), np.maximum(t1, 0)
    # y = g (1 - exp(-t/tau)): tick average and end points, analytically and
    # well conditioned: avg/g = (1 - e0) + e0 h(x), e0 = exp(-t0/tau), x = T/tau,
    # h(x) = 1 - (1 - exp(-x))/x (series where x is small)
    x = (t1c - t0c) / tau_s
    h = np.where(x < 1e-3, x / 2 - x ** 2 / 6 + x ** 3 / 24 - x ** 4 / 120,
                 1 + np.expm1(-x) / np.where(x > 0, x, 1.0))
    e0 = np.exp(-t0c / tau_s)
    avg = g * (-np.expm1(-t0c / tau_s) + e0 * h)
    y0 = -g * np.expm1(-t0c / tau_s)
    y1 = -g * np.expm1(-t1c / tau_s)
    expect = avg - st.tau_s[0] * (y1 - y0) / T
    np.testing.assert_allclose(tr[:, 0], expect, rtol=1e-9, atol=1e-12 * g)
    assert tr[0, 0] == 0.0


def test_aom_integrates_and_reveals_the_round_trip_delay():
    s = _quiet("rack50")
    cfg, st = build_rig(s, 3, 4)
    ftw = np.array([20000, -30000, 0], np.int32)     # 4.7 kHz, -7.0 kHz
    pz, sp, _ = _mid(cfg)
    j0 = 50
    n = 500
    ai, aq, tr = _steps(cfg, st, n, lambda k: (pz, sp, ftw if k >= j0 else 0 * ftw))
    T = cfg.tick_s
    df = ftw * 1e9 / 2 ** 32
    k = np.arange(n)
    # forward truth: ramp of df * T_opt per second from the interval after j0
    late = k > j0 + 2
    slope = np.polyfit(k[late] * T, tr[late], 1)[0]
    np.testing.assert_allclose(slope, df * T_OPT, rtol=1e-9, atol=1e-30)
    # measured round trip: 2 df turns per second and the -df tau_rt offset
    ph = _phase_turns(ai, aq)
    ph = ph - ph[: j0 + 1].mean(axis=0)
    t_on = (k - j0 - 1).clip(0) * T                 # time since the new offset applies
    phi_avg = df[None, :] * (t_on[:, None] + np.where(k[:, None] > j0, T / 2, 0.0))
    expect = 2 * phi_avg - np.where(k[:, None] > j0, df[None, :] * st.tau_rt_s[None, :], 0.0)
    err = ph - expect
    assert np.max(np.abs(err)) < 1e-4                  # turns (I/Q noise ~1e-5)
    # the delay calibration of DESIGN section 4: offset / df = tau_rt
    for c in range(2):
        fit = np.polyfit(k[late] * T, ph[late, c], 1)
        off = fit[1] - 2 * df[c] * (-(j0 + 1) * T + T / 2)
        assert -off / df[c] == pytest.approx(st.tau_rt_s[c], rel=0.01)


@pytest.mark.parametrize("which", ["pzt", "spool", "aom"])
def test_one_tick_latch(which):
    """A code passed to call j first changes the outputs of call j+1."""
    j = 7
    runs = []
    for change in (False, True):
        cfg, st = build_rig("rack10", 2, 5)
        pz, sp, ao = _mid(cfg)
        def codes(k):
            p, s_, a = pz.copy(), sp.copy(), ao.copy()
            if change and k >= j:
                if which == "pzt":
                    p += 400_000
                elif which == "spool":
                    s_ += 20_000
                else:
                    a += 100_000_000
            return p, s_, a
        runs.append(_steps(cfg, st, j + 3, codes))
    (ai0, aq0, tr0), (ai1, aq1, tr1) = runs
    np.testing.assert_array_equal(tr0[: j + 1], tr1[: j + 1])
    np.testing.assert_array_equal(ai0[: j + 1], ai1[: j + 1])
    assert np.all(tr0[j + 1] != tr1[j + 1])
    assert np.all((ai0[j + 1] != ai1[j + 1]) | (aq0[j + 1] != aq1[j + 1]))


# ------------------------------------------------------ measured phase

def test_measured_phase_tracks_round_trip_truth():
    """Laser off: measured round-trip turns = 2 truth / T_opt + phi_0, up to
    I/Q noise and the tau d/dt propagation terms (< 1 as)."""
    s = get_scenario("rack50").replace(laser_linewidth_hz=0.0)
    cfg, st = build_rig(s, 4, 8)
    ai, aq, tr = rig_run(cfg, st, *_mid(cfg), 20000)
    ph = _phase_turns(ai, aq)
    expect = 2 * tr / T_OPT + st.phi0_turns
    res = ph - expect
    res -= np.round(res[0])
    assert np.max(np.abs(np.mean(res, axis=0))) < 1e-4
    assert np.max(np.std(res, axis=0)) < 3e-4                # turns: 0.8 as one-way
    assert np.std(2 * tr / T_OPT) > 0.5                      # the truth does move (turns)


def test_laser_self_heterodyne_noise_size():
    """With the laser on, the phase noise is the tick-averaged self-heterodyne
    D tau_rt^2 (T - tau_rt/3) / T^2, common to all channels."""
    s = get_scenario("rack50")
    cfg, st = build_rig(s, 4, 12)
    ai, aq, tr = rig_run(cfg, st, *_mid(cfg), 40000)
    res = _phase_turns(ai, aq) - 2 * tr / T_OPT
    res -= res.mean(axis=0)
    T, D, trt = cfg.tick_s, 2 * np.pi * s.laser_linewidth_hz, st.tau_rt_s
    sigma = np.sqrt(D * trt ** 2 * (T - trt / 3) / T ** 2) / (2 * np.pi)
    np.testing.assert_allclose(res.std(axis=0), sigma, rtol=0.08)
    z = res / sigma
    corr = np.corrcoef(z.T)
    assert np.min(corr) > 0.9                                # one laser for all


# ------------------------------------------------------------ fault hooks

def _pair(seed=21, name="rack10", n_ch=2, **kw):
    s = get_scenario(name).replace(**kw) if kw else get_scenario(name)
    return build_rig(s, n_ch, seed), build_rig(s, n_ch, seed)


def _amp(ai, aq):
    return np.hypot(ai.astype(float), aq.astype(float))


def test_remove_and_insert_blade():
    s = get_scenario("hotswap")
    cfg, st = build_rig(s, 3, 2)
    remove_blade(st, 1)
    ai, aq, tr = rig_run(cfg, st, *_mid(cfg), 2000)
    assert np.all(np.isnan(tr[:, 1])) and np.all(np.isfinite(tr[:, [0, 2]]))
    sig = cfg.iq_noise_lsb
    assert np.std(ai[:, 1]) == pytest.approx(sig, rel=0.1)
    assert np.max(np.abs(ai[:, 1])) < 7 * sig
    blade = draw_blade(s, np.random.default_rng(1), 1)
    insert_blade(cfg, st, 1, **blade)
    assert st.blade_serial[1] == np.uint64(blade["serial"])
    assert st.length_m[1] == blade["length_m"]
    assert static_oneway_s(st)[1] == pytest.approx(
        blade["length_m"] * 4.9e-9 + blade["oneway_offset_s"])
    ai, aq, tr = rig_run(cfg, st, *_mid(cfg), 200)
    assert np.all(np.isfinite(tr))
    np.testing.assert_allclose(np.mean(_amp(ai, aq)[:, 1]),
                               16384 * 10 ** (-blade["loss_db"] / 20), rtol=2e-3)


def test_loss_and_fade_scale_the_amplitude():
    (cfg, st), _ = _pair()
    st.loss_db[0] = 6.0
    st.fade_db[1] = 3.0
    st.loss_db[1] = 0.0
    ai, aq, _ = rig_run(cfg, st, *_mid(cfg), 500)
    a = _amp(ai, aq).mean(axis=0)
    np.testing.assert_allclose(a, 16384 * 10 ** (-np.array([6.0 + st.fade_db[0], 3.0]) / 20),
                               rtol=1e-3)


def test_detune_asymmetry_jump_leave_truth_as_documented():
    (cfg, st), (cfg0, st0) = _pair(n_ch=3)
    n0, n = 100, 1000
    a0 = rig_run(cfg, st, *_mid(cfg), n0)
    b0 = rig_run(cfg0, st0, *_mid(cfg0), n0)
    apply_fault(st, 0, "detune", 1000.0)
    apply_fault(st, 1, "asymmetry", 1e-15)
    apply_fault(st, 2, "phase_jump", 1e-15)
    a = rig_run(cfg, st, *_mid(cfg), n)
    b = rig_run(cfg0, st0, *_mid(cfg0), n)
    assert st.phase_jump_s[2] == 0.0                          # one-off
    np.testing.assert_array_equal(a[2][:, :2], b[2][:, :2])   # truth unaffected
    np.testing.assert_allclose(a[2][:, 2] - b[2][:, 2], 1e-15, rtol=1e-9)
    dph = (_phase_turns(np.vstack([a0[0], a[0]]), np.vstack([a0[1], a[1]])) -
           _phase_turns(np.vstack([b0[0], b[0]]), np.vstack([b0[1], b[1]])))[n0:]
    k = np.arange(n)
    T = cfg.tick_s
    np.testing.assert_allclose(dph[:, 0], 1000.0 * T * (k + 0.5), atol=2e-3)
    np.testing.assert_allclose(dph[:, 1], 1e-15 / T_OPT, atol=2e-3)       # round trip only
    np.testing.assert_allclose(dph[:, 2], 2e-15 / T_OPT, atol=2e-3)       # both ways


def test_stuck_actuators_ignore_codes():
    (cfg, st), (cfg0, st0) = _pair()
    pz, sp, ao = _mid(cfg)
    st.pzt_stuck[0] = 1
    st.spool_stuck[1] = 1
    pz2, sp2 = pz + 50_000, sp + 100
    a = rig_run(cfg, st, pz2, sp2, ao, 300)
    b = rig_run(cfg0, st0, pz, sp, ao, 300)
    # ch0: PZT stuck, spool moves; ch1: spool stuck, PZT moves
    b2 = rig_run(*build_rig(get_scenario("rack10"), 2, 21), pz, sp2, ao, 300)
    b3 = rig_run(*build_rig(get_scenario("rack10"), 2, 21), pz2, sp, ao, 300)
    np.testing.assert_array_equal(a[2][:, 0], b2[2][:, 0])
    np.testing.assert_array_equal(a[2][:, 1], b3[2][:, 1])
    assert not np.array_equal(a[2][:, 0], b[2][:, 0])


def test_adc_glitch_then_clean_and_overrange():
    (cfg, st), (cfg0, st0) = _pair()
    st.adc_glitch_remaining[0] = 5
    a = rig_run(cfg, st, *_mid(cfg), 50)
    b = rig_run(cfg0, st0, *_mid(cfg0), 50)
    bad = (a[0][:, 0] != b[0][:, 0]) | (a[1][:, 0] != b[1][:, 0])
    np.testing.assert_array_equal(np.flatnonzero(bad), np.arange(5))
    assert st.adc_glitch_remaining[0] == 0
    np.testing.assert_array_equal(a[2], b[2])                  # truth unaffected
    assert np.max(np.abs(a[0][:5, 0].astype(int))) > 16384 * 1.1 or \
        np.max(np.abs(a[1][:5, 0].astype(int))) > 16384 * 1.1
    # overrange: a return 12 dB above nominal always clips a quadrature
    st.loss_db[1] = -12.0
    rig_run(cfg, st, *_mid(cfg), 3)
    assert st.adc_overrange[1] == 1 and st.adc_overrange[0] == 0
    ai, aq, _ = rig_run(cfg, st, *_mid(cfg), 200)
    assert max(ai[:, 1].max(), aq[:, 1].max()) == 32767 or \
        min(ai[:, 1].min(), aq[:, 1].min()) == -32768


def test_polarisation_fading_without_faraday_mirror():
    s = get_scenario("rack10").replace(faraday_mirror=False)
    cfg, st = build_rig(s, 2, 3)
    st.faraday[1] = 1
    ai, aq, _ = rig_run(cfg, st, *_mid(cfg), 400_000)           # 4 s
    a = _amp(ai, aq)
    assert a[:, 0].min() < 0.5 * 16384 * 10 ** (-st.loss_db[0] / 20)
    assert a[:, 1].min() > 0.99 * 16384 * 10 ** (-st.loss_db[1] / 20)


def test_apply_fault_rejects_unknown_kind():
    cfg, st = build_rig("rack10", 1, 0)
    with pytest.raises(ValueError, match="fade"):
        apply_fault(st, 0, "melt", 1.0)


def test_thermal_ramp_and_walk():
    """Truth drifts at TCD * L * ramp; the walk's increments over the update
    interval have the diffusion of the scenario."""
    s = get_scenario("rack50").replace(acoustic_rms_s=0.0, laser_linewidth_hz=0.0,
                                       temp_rw_k_per_sqrt_s=0.0)
    cfg, st = build_rig(s, 3, 6)
    _, _, tr = rig_run(cfg, st, *_mid(cfg), 5000)
    t = np.arange(5000) * cfg.tick_s
    slope = np.polyfit(t, tr, 1)[0]
    np.testing.assert_allclose(slope, s.tcd_s_per_k_m * st.length_m * s.temp_ramp_k_per_s,
                               rtol=1e-9)
    s = s.replace(temp_ramp_k_per_s=0.0, temp_rw_k_per_sqrt_s=3e-3)
    cfg, st = build_rig(s, 40, 6)
    M = cfg.thermal_update_ticks
    n = 200 * M
    temps = np.empty((n // M, 40))
    for j in range(n // M):
        rig_run(cfg, st, *_mid(cfg), M)
        temps[j] = st.temp_k
    inc = np.diff(temps, axis=0).ravel()
    u = M * cfg.tick_s
    assert np.std(inc) == pytest.approx(3e-3 * math.sqrt(u), rel=0.05)


def test_insert_blade_on_a_long_link():
    s = get_scenario("longhaul")
    cfg, st = build_rig(s, 4, 1)
    insert_blade(cfg, st, 1, length_m=60e3, loss_db=1.0, serial=7, oneway_offset_s=1e-12)
    assert st.tau_s[1] == pytest.approx(60e3 * 4.9e-9)
    assert st.act_rt_D[1] == int(2 * 60e3 * 4.9e-9 / cfg.dt_s)
    _, _, tr = rig_run(cfg, st, *_mid(cfg), 200)
    assert np.all(np.isfinite(tr))
    with pytest.raises(ValueError, match="delay lines"):
        insert_blade(cfg, st, 1, length_m=150e3, loss_db=0.0, serial=8, oneway_offset_s=0.0)
    cfg, st = build_rig("rack10", 2, 1)
    with pytest.raises(ValueError, match="lumped"):
        insert_blade(cfg, st, 0, length_m=2000.0, loss_db=0.0, serial=9, oneway_offset_s=0.0)
