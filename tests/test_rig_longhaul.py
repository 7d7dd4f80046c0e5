"""Long links: the segmented rig reproduces the delay-unsuppressed noise.

An ideal float controller (written here, not the bank) holds the measured
round trip with a high-gain PI^2 loop through the AOM; the out-of-loop
residual one-way PSD must then follow S_res = a (2 pi f tau)^2 S_fiber with
a = 1/3 for the distributed out-and-back fibre (Williams et al., JOSA B 25,
1284 (2008)) and a = 1/4 for the folded single fibre (seed 004 appendix),
within 2 dB in the band where the loop gain is high and f << 1/(4 tau).

The test rig runs at 100 kHz (build_rig's loop_rate_hz), 8 segments and 2
internal steps: the loop gain needed for the delay term to dominate the
in-loop error at tens of Hz is set by the tick latency, not by tau (the
near-end correction reaches the round trip at once and again 2 tau later,
so the loop phase never passes -180 deg except at the notches of
1 + exp(-i 4 pi f tau), where |L| -> 2 K T_lat < 1).
"""
import math

import numpy as np
import pytest
from numba import njit
from scipy import signal

from sim_hw.constants import (GEOM_DISTRIBUTED, GEOM_FOLDED, ONEWAY_S_PER_TURN,
                              OPTICAL_PERIOD_S)
from sim_hw.fibre import folded_open_loop_factor, forward_passes, pass_delays
from sim_hw.rig import build_rig, rig_run, rig_step
from sim_hw.scenarios import get_scenario

RATE_HZ = 100e3


@njit(cache=True)
def _closed_loop(cfg, st, n, kp, ki, truth_out):
    """PI on the AOM frequency = PI^2 on the delay; one-way units."""
    N = cfg.n_channels
    pz = np.full(N, cfg.pzt_mid, np.int32)
    sp = np.full(N, cfg.spool_mid, np.int32)
    ao = np.zeros(N, np.int32)
    ai = np.zeros(N, np.int16)
    aq = np.zeros(N, np.int16)
    tr = np.zeros(N)
    prev = np.zeros(N)
    acc = np.zeros(N)
    ref = np.zeros(N)
    integ = np.zeros(N)
    T = cfg.tick_s
    for k in range(n):
        rig_step(cfg, st, pz, sp, ao, ai, aq, tr)
        for c in range(N):
            ph = math.atan2(float(aq[c]), float(ai[c])) / (2 * math.pi)
            d = ph - prev[c]
            d -= math.floor(d + 0.5)
            prev[c] = ph
            acc[c] += d
            if k == 0:
                ref[c] = acc[c]
            e = (acc[c] - ref[c]) * ONEWAY_S_PER_TURN      # round trip / 2, s
            integ[c] += e * T
            rate = -(kp[c] * e + ki[c] * integ[c])         # wanted d(delay)/dt
            ao[c] = np.int32(round(rate / OPTICAL_PERIOD_S / cfg.aom_hz_per_ftw))
            truth_out[k, c] = tr[c]


def _scenario():
    # no thermal drift (slow, common to all segments: not the distributed
    # noise the formula is about); 8 channels = two of each kind
    s = get_scenario("longhaul")
    return s.replace(temp_ramp_k_per_s=0.0, temp_rw_k_per_sqrt_s=0.0, n_segments=8,
                     internal_steps_per_tick=2, max_channels=8)


def test_pass_tables_first_order_a():
    """The pass timing gives a = 1/3 - 1/(12 K^2) and 1/4 to first order."""
    K, tau = 16, 1e-4
    for g, a in ((GEOM_DISTRIBUTED, 1 / 3 - 1 / (12 * K * K)), (GEOM_FOLDED, 0.25)):
        rt_d, rt_w, fw_d, fw_w = pass_delays(g, tau, K)
        P = forward_passes(g)
        # held round trip: c(t - tau) = -RT/2; FW - RT/2 = sum_j (slope) d_j'
        # with slope = -(sum fw delays) + (sum rt delays)/2 per segment
        slope = -(fw_d * fw_w).sum(axis=1) + 0.5 * (rt_d * rt_w).sum(axis=1)
        # each segment carries S_fiber / (K P^2): a = sum slope^2 / (K P^2 tau^2)
        assert np.sum(slope ** 2) / (K * P * P * tau ** 2) == pytest.approx(a, rel=1e-12)
        # forward passes are coherent at low f: sum of weights = P per segment
        assert np.all(fw_w.sum(axis=1) == P)
        assert np.all(rt_w.sum(axis=1) == 2 * P)


def test_open_loop_forward_psd():
    """Free-running forward delay = S_fiber (distributed) and S_fiber times
    the two-pass decorrelation factor (folded)."""
    s = _scenario()
    cfg, st = build_rig(s, 4, 11)
    n = 40_000                                              # 4 s at 10 kHz
    N = cfg.n_channels
    _, _, tr = rig_run(cfg, st, np.full(N, cfg.pzt_mid), np.full(N, cfg.spool_mid),
                       np.zeros(N), n)
    f, P = signal.welch(tr.T, fs=cfg.loop_rate_hz, nperseg=4096, detrend="linear")
    band = (f >= 3) & (f <= 300)
    for c in range(N):
        S = s.fibre_psd_s2_per_hz(f[band], st.length_m[c])
        if st.geometry[c] == GEOM_FOLDED:
            S = S * folded_open_loop_factor(f[band], st.tau_s[c], s.n_segments)
        ratio_db = 10 * np.log10(np.mean(P[c, band] / S))
        assert abs(ratio_db) < 0.5, (c, ratio_db)


def test_closed_loop_residual_follows_williams():
    s = _scenario()
    cfg, st = build_rig(s, 8, 5, loop_rate_hz=RATE_HZ)
    N = cfg.n_channels
    K = np.full(N, 12000.0)                    # rad/s, 2 K T_lat ~ 0.5
    wz = np.minimum(3000.0, 0.15 * np.pi / st.tau_rt_s)   # PI^2 zero below the first notch
    n = int(2.7 * RATE_HZ)
    truth = np.zeros((n, N))
    _closed_loop(cfg, st, n, K, K * wz, truth)
    skip = int(0.2 * RATE_HZ)
    assert np.all(np.isfinite(truth))
    f, P = signal.welch(truth[skip:].T, fs=RATE_HZ, nperseg=2 ** 15, detrend="linear")
    geoms = {GEOM_DISTRIBUTED: "distributed", GEOM_FOLDED: "folded"}
    seen = {}
    for c in range(N):
        g = geoms[int(st.geometry[c])]
        L = float(st.length_m[c])
        top = 60.0 if L < 50e3 else 40.0       # << 1/(4 tau) and high loop gain
        edges = [10.0, 20.0, top]
        W = s.delay_limited_psd_s2_per_hz(f, L, g)
        r = [np.mean(P[c, (f >= a) & (f < b)]) / np.mean(W[(f >= a) & (f < b)])
             for a, b in zip(edges[:-1], edges[1:])]
        seen.setdefault((g, L), []).append(r)
    assert len(seen) == 4
    for (g, L), rs in seen.items():
        ratio_db = 10 * np.log10(np.mean(rs, axis=0))
        assert np.all(np.abs(ratio_db) < 2.0), (g, L, ratio_db)
    # and the two geometries really differ by a: 1/3 vs 1/4 (1.25 dB) is
    # resolved, the residual is not just "small"
    d = np.mean(seen[("distributed", 25e3)], axis=0) / np.mean(seen[("folded", 25e3)], axis=0)
    assert np.all(np.abs(10 * np.log10(d) - 10 * np.log10(4 / 3)) < 1.5)
