"""Primitives of the rig: random streams, turn trig, discretisation, front
end, scenarios; each against an independent oracle."""
import math

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings, strategies as st
from numba import njit
from scipy import integrate, signal, stats

from sim_hw import rng as R
from sim_hw.discretise import chol2, expm, lyapunov_stationary, van_loan, zoh_with_average
from sim_hw.frontend import channel_garbage_keys, garbage, quantise
from sim_hw.scenarios import SCENARIOS, WILLIAMS_A, get_scenario, hotswap_schedule
from sim_hw.trig import sinc_pi, sincos_turns

MASK = (1 << 64) - 1


def _py_xoshiro(s):
    """Reference xoshiro256** (Blackman & Vigna), Python ints."""
    rotl = lambda x, k: ((x << k) | (x >> (64 - k))) & MASK
    out = rotl((s[1] * 5) & MASK, 7) * 9 & MASK
    t = (s[1] << 17) & MASK
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = rotl(s[3], 45)
    return out


def test_xoshiro_matches_reference():
    state = R.seed_streams(123, [0, 1])
    ref = [int(x) for x in state[1]]
    got = [int(R.next_u64(state, 1)) for _ in range(1000)]
    want = [_py_xoshiro(ref) for _ in range(1000)]
    assert got == want
    # the reference's own check: state {1, 2, 3, 4} starts 11520, 0, ...
    s = np.array([[1, 2, 3, 4]], np.uint64)
    assert [int(R.next_u64(s, 0)) for _ in range(3)] == [11520, 0, 1509978240]


def test_splitmix64_matches_reference():
    for x in (0, 1, 12345, MASK):
        assert int(R.splitmix64(np.uint64(x))) == R._py_splitmix64(x)
    assert R._py_splitmix64(0) == 0xE220A8397B1DCDAF      # splitmix64 output for state 0


def test_streams_independent_of_others():
    a = R.seed_streams(7, [5, 6, 7])
    b = R.seed_streams(7, [7])
    np.testing.assert_array_equal(a[2], b[0])
    assert not np.array_equal(R.seed_streams(8, [7]), b)
    assert np.all(a != 0)


@njit(cache=True)
def _draw(s, n, kind):
    out = np.empty(n)
    k = 0
    while k < n:
        if kind == 0:
            out[k] = R.normal(s, 0)
            k += 1
        elif kind == 1:
            a, b = R.normal_pair(s, 0)
            out[k] = a
            out[k + 1] = b
            k += 2
        else:
            a, b, c, d = R.normals4(s, 0)
            out[k:k + 4] = (a, b, c, d)
            k += 4
    return out


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_normal_samplers_are_normal(kind):
    x = _draw(R.seed_streams(kind + 40, [0]), 400_000, kind)
    assert stats.kstest(x, "norm").pvalue > 1e-3
    assert abs(x.mean()) < 5 / math.sqrt(x.size)
    assert abs(x.var() - 1) < 6 * math.sqrt(2 / x.size)
    # the tail beyond the ziggurat's base (3.654) has the right weight
    p = 2 * stats.norm.sf(3.6541528853610088)
    assert abs(np.mean(np.abs(x) > 3.6541528853610088) - p) < 5 * math.sqrt(p / x.size)


@settings(max_examples=300)
@given(st.floats(-1e4, 1e4, allow_nan=False))
def test_sincos_turns_matches_numpy(x):
    s, c = sincos_turns(x)
    ref = 2 * np.pi * np.float64(x)
    tol = 1e-15 + 4e-16 * abs(ref)          # numpy's own argument rounding
    assert abs(s - math.sin(ref)) <= tol and abs(c - math.cos(ref)) <= tol


def test_sincos_turns_quarter_points_and_sinc():
    for x, (s, c) in ((0.0, (0, 1)), (0.25, (1, 0)), (0.5, (0, -1)), (-0.25, (-1, 0)),
                      (3.75, (-1, 0))):
        assert sincos_turns(x) == pytest.approx((s, c), abs=1e-15)
    for x in (0.0, 1e-6, 5e-5, 0.3, 1.0, 2.5):
        assert sinc_pi(x) == pytest.approx(np.sinc(x), abs=1e-12)


def test_expm_and_discretisation_against_scipy():
    rng = np.random.default_rng(0)
    for n in (2, 3, 4):
        M = rng.standard_normal((n, n)) * 3
        np.testing.assert_allclose(expm(M), scipy.linalg.expm(M), rtol=1e-12, atol=1e-12)
    w0, Q, T = 2 * np.pi * 30e3, 10.0, 1e-5
    A = np.array([[0.0, 1.0], [-w0 * w0, -w0 / Q]])
    B = np.array([0.0, w0 * w0])
    Phi, Gam, Pa, Ga = zoh_with_average(A, B, T)
    Ad, Bd, *_ = signal.cont2discrete((A, B[:, None], np.eye(2), np.zeros((2, 1))), T,
                                      method="zoh")
    np.testing.assert_allclose(Phi, Ad, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(Gam, Bd[:, 0], rtol=1e-12)
    # the underdamped oscillator in closed form
    z = 1 / (2 * Q)
    wd = w0 * math.sqrt(1 - z * z)
    e, c, sn = math.exp(-z * w0 * T), math.cos(wd * T), math.sin(wd * T)
    exact = e * np.array([[c + z * w0 / wd * sn, sn / wd], [-w0 * w0 / wd * sn, c - z * w0 / wd * sn]])
    np.testing.assert_allclose(Phi, exact, rtol=1e-13)
    # average of x over the tick: x(t) = E(t) x0 + A^-1 (E(t) - I) B u, so
    # int_0^T x = A^-1 (E(T) - I) x0 + A^-1 (A^-1 (E(T) - I) - T I) B u
    x0, u = np.array([1e-12, 3e-8]), 2e-12
    E, I = scipy.linalg.expm(A * T), np.eye(2)
    Ai = np.linalg.inv(A)
    ref = (Ai @ (E - I) @ x0 + Ai @ (Ai @ (E - I) - T * I) @ B * u) / T
    np.testing.assert_allclose(Pa @ x0 + Ga * u, ref, rtol=1e-9)


def test_van_loan_and_stationary_covariance():
    w1, w2, T = 2 * np.pi * 10, 2 * np.pi * 2000, 1e-5
    A = np.array([[-w1, w1], [0.0, -w2]])
    B = np.array([0.0, w2])
    Phi, Q = van_loan(A, B, T)
    ref = integrate.quad_vec(lambda s: scipy.linalg.expm(A * s) @ np.outer(B, B)
                             @ scipy.linalg.expm(A * s).T, 0, T, epsrel=1e-12)[0]
    np.testing.assert_allclose(Q, ref, rtol=1e-8)
    P = lyapunov_stationary(A, B)
    np.testing.assert_allclose(P, scipy.linalg.solve_continuous_lyapunov(A, -np.outer(B, B)),
                               rtol=1e-10)
    np.testing.assert_allclose(Phi @ P @ Phi.T + Q, P, rtol=1e-9)   # stationary under the step
    l11, l21, l22 = chol2(Q)
    L = np.array([[l11, 0], [l21, l22]])
    np.testing.assert_allclose(L @ L.T, Q, rtol=1e-9)


@pytest.mark.parametrize("x,v,o", [(0.49, 0, 0), (0.5, 1, 0), (-0.5, 0, 0), (-0.51, -1, 0),
                                   (32767.4, 32767, 0), (32767.6, 32767, 1),
                                   (-32768.4, -32768, 0), (-40000.0, -32768, 1)])
def test_quantise_table(x, v, o):
    assert quantise(x, -32768.0, 32767.0) == (v, o)


def test_garbage_is_reproducible_and_in_range():
    key = channel_garbage_keys(np.uint64(99), 5)[3]
    g = [garbage(key, k, -32768.0, 32767.0) for k in range(2000)]
    assert g == [garbage(key, k, -32768.0, 32767.0) for k in range(2000)]
    assert g != [garbage(channel_garbage_keys(np.uint64(99), 5)[2], k, -32768.0, 32767.0)
                 for k in range(2000)]                   # every channel its own garbage
    xi = np.array([x[0] for x in g])
    assert xi.min() >= -32768 and xi.max() <= 32767
    rails = np.mean([x[2] for x in g])
    assert 0.4 < rails < 0.6                     # half the ticks at the rails


# --------------------------------------------------------------- scenarios

def test_get_scenario_lists_valid_names():
    for name in ("rack10", "rack50", "hotswap", "longhaul"):
        assert get_scenario(name).name == name
    with pytest.raises(ValueError) as e:
        get_scenario("rack100")
    for name in SCENARIOS:
        assert name in str(e.value)


def test_scenarios_hold_the_table_or_harder():
    r10, r50, hs, lh = (get_scenario(n) for n in ("rack10", "rack50", "hotswap", "longhaul"))
    for s in (r10, r50, hs):
        assert s.n_channels == 40 and s.loop_rate_hz == 100e3
        assert s.laser_linewidth_hz >= 1e3 and s.return_power_dbm <= -20
        assert s.pzt_range_s == 2e-12 and s.pzt_dac_bits == 20
        assert s.pzt_resonance_hz == 30e3 and s.pzt_q == 10
        assert s.spool_range_s == 50e-12 and s.spool_tau_s == 30 and s.spool_dac_bits == 16
        assert s.acoustic_corner_lo_hz == 10 and s.acoustic_corner_hi_hz == 2000
    assert (r10.link_length_min_m, r10.link_length_max_m) == (1, 10)
    assert r10.tcd_s_per_k_m >= 40e-15 and r10.temp_ramp_k_per_s >= 1 / 3600
    assert r10.temp_rw_k_per_sqrt_s >= 1e-3 and r10.acoustic_rms_s >= 1e-15
    assert r10.bar_residual_rms_s <= 10e-18 and r10.bar_slips == 0
    assert (r50.link_length_min_m, r50.link_length_max_m) == (10, 50)
    assert r50.tcd_s_per_k_m >= 100e-15 and r50.temp_ramp_k_per_s >= 1 / 60
    assert r50.temp_rw_k_per_sqrt_s >= 3e-3 and r50.acoustic_rms_s >= 3e-15
    assert r50.bar_residual_rms_s <= 100e-18 and r50.bar_pzt_peak_frac <= 0.8
    assert hs.connector_loss_max_db >= 6 and 0 < hs.hotswap_mean_interval_s <= 5
    assert hs.bar_lock_time_s <= 0.1
    assert 1 <= lh.n_channels <= 4 and 1e3 <= lh.loop_rate_hz <= 10e3
    assert set(lh.geometries) == {"distributed", "folded"}
    assert min(lh.link_lengths_m) >= 10e3 and max(lh.link_lengths_m) <= 100e3
    assert lh.bar_delay_limited_db <= 2.0
    assert WILLIAMS_A == {"distributed": 1 / 3, "folded": 1 / 4}


@pytest.mark.parametrize("name", ["rack10", "rack50", "longhaul"])
def test_acoustic_rms_is_the_band_integral(name):
    s = get_scenario(name)
    L = s.acoustic_ref_length_m * 0.37
    val, _ = integrate.quad(lambda f: s.acoustic_psd_s2_per_hz(f, L) / 1e-30,
                            s.acoustic_band_lo_hz, s.acoustic_band_hi_hz, limit=200)
    assert math.sqrt(val * 1e-30) == pytest.approx(s.acoustic_rms_at_s(L), rel=1e-8)
    # shape: flat, then f^-2, then f^-4
    f = np.array([0.01, 1.0]) * s.acoustic_corner_lo_hz
    assert s.acoustic_psd_s2_per_hz(f[1], L) / s.acoustic_psd_s2_per_hz(f[0], L) == \
        pytest.approx(0.5, rel=1e-3)


def test_hotswap_schedule():
    s = get_scenario("hotswap")
    ev = hotswap_schedule(s, 40, 60.0, seed=3)
    assert ev == hotswap_schedule(s, 40, 60.0, seed=3)
    assert ev != hotswap_schedule(s, 40, 60.0, seed=4)
    times = [e[0] for e in ev]
    assert times == sorted(times) and times[0] >= s.hotswap_start_s and times[-1] < 60.0
    removals = [e for e in ev if e[2] == "remove"]
    assert 60.0 / s.hotswap_mean_interval_s / 3 < len(removals) < 60.0 / s.hotswap_mean_interval_s * 3
    out = {}
    for t, ch, kind, p in ev:
        if kind == "remove":
            assert ch not in out
            out[ch] = t
        else:
            assert ch in out
            dt = t - out.pop(ch)
            assert s.hotswap_out_min_s <= dt <= s.hotswap_out_max_s
            assert 0 <= p["loss_db"] <= 6.0
            assert s.link_length_min_m <= p["length_m"] <= s.link_length_max_m
            assert 0 <= p["serial"] < 2 ** 64
    assert hotswap_schedule(get_scenario("rack10"), 40, 60.0, seed=3) == []
