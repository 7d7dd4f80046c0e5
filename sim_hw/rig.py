"""The simulated attobus rig: 40 fibre links, actuators, front end, blades.

One call of `rig_step` advances every channel by one loop tick T and returns
the front end's I/Q sample of that tick plus the ground truth. Everything is
float64 deviations from a nominal static link (the 49 ns..490 us static delay
only sets the initial round-trip phase and the delay-line lengths), so
attoseconds survive: a 100 ps deviation keeps 1e-26 s resolution.

Timing (DESIGN section 5: "the output computed from tick k is applied at tick
k+1"). Call j simulates the interval [jT, (j+1)T] with the codes latched by
call j-1 (zero-order hold), writes the I/Q and truth averaged over that
interval, then latches the codes passed to call j for the interval of call
j+1. So a code passed to call j first shows in the outputs of call j+1; seen
from the bank, which computes its codes from the sample of call j and passes
them to call j+1, a code computed from ADC sample k first shows in ADC sample
k+2 (one tick of computation, one of integrate-and-dump: the "ZOH, one-tick
delay" plant of DESIGN section 3).

Signs. All three actuators add one-way delay for a positive code offset:
PZT and spool stretch the fibre; the AOM runs in the -1 order, so raising
the DDS frequency by df lowers the optical frequency and the forward light
lags at d(delay)/dt = +df * T_opt. The measured phase grows with delay:
round-trip turns = round-trip delay / T_opt (one turn = 2.585 fs one-way).

Front end. I + iQ = A e^{i 2 pi phi} + noise, phi the round-trip phase of
the tick in turns (plus the static phase phi_0), A = 16384 LSB at -20 dBm
times 10^(-(loss_db + fade_db)/20) times the polarisation visibility (1 with
the Faraday mirror), times sinc(delta) for the phase motion delta (turns)
inside the tick (the average of a phasor over a linear ramp); noise: shot +
electronic, Gaussian per quadrature; rounded to int16, clipped (adc_overrange
set for the channel when any quadrature clipped this tick).

Non-reciprocity. asym_s is an extra delay of the return path only: the
round trip measures 2 tau_fw + asym while the forward truth does not contain
it. A loop that holds the round trip therefore moves the forward delay by
-asym/2: a non-reciprocal step of x shows as x/T_opt turns in the measured
phase and, once servoed, as a -x/2 one-way error at the blade that no
out-of-loop check inside the MCU can see (the attack of DESIGN section 5).
detune_hz (an optical offset of the return) rotates the measured phase at
detune_hz turns/s and leaves the truth alone; phase_jump_s is a fibre event
of both directions (truth +x, round trip +2x; in the segmented model at the
near end, so the round trip sees it at once and again after tau_rt).

Blades. A blade has a serial and a stored one-way offset: the delay from
its fibre end to its timing point, behind the Faraday mirror, so the round
trip never sees it (that is why it is stored and loaded by serial);
static_oneway_s() gives fibre + offset for absolute alignment. A removed
blade (present = 0) returns no light: I/Q are noise only and the truth is
NaN (there is no blade to be on time); the fibre, its noise and the
actuators carry on, so a re-inserted blade (insert_blade) continues from
the same fibre state with its own length, loss, serial and offset.

Two link models, chosen per scenario:

lumped (rack, tau << T): every process is evaluated at the tick with the
first-order propagation terms: a near-end actuator c enters the forward truth
as c(t - tau) ~ c - tau c' and the round trip as c(t) + c(t - 2 tau) ~
2c - 2 tau c'; the fibre noise f (spread along the fibre) as f - tau f'/2 and
2f - 2 tau f'; c' and f' are the tick's average slopes. The AOM phase Phi
(turns, integral of df) is exact for piecewise-constant df, including the
tick in which df changes: forward Phi(t - tau), round trip Phi(t) +
Phi(t - 2 tau), averaged over the tick:
    forward  : Phi_avg - df tau + (df - df_prev) tau^2 / (2T)
    round trip: 2 Phi_avg - df tau_rt + (df - df_prev) tau_rt^2 / (2T)
so stepping the DDS by df moves the round-trip phase by -df tau_rt on top of
the 2 df t ramp (DESIGN section 4's delay calibration, dphi/df = 2 pi tau_rt).
Laser: the self-heterodyne phase phi_L(t) - phi_L(t - tau_rt) of a Lorentzian
laser (Wiener phase, diffusion D = 2 pi dnu) averaged over T is
(1/T) int w(s) dW(s), w(s) = |[s, s+tau_rt] n [0, T]|, whose variance is
D tau_rt^2 (T - tau_rt/3) / T^2 ~ 2 pi dnu tau_rt^2 / T (1.0 as one-way RMS
for 10 m, 5 as for 50 m at 100 kHz); it is drawn as (tau_rt/T) sqrt(1 -
tau_rt/(3T)) times one common Wiener increment of the tick (one laser feeds
all channels, so their laser noise is correlated), neglecting the
correlation tau_rt/(6T) <= 0.8 % between adjacent ticks.

segmented (long links): the fibre is K segments with delay lines at S
internal steps per tick (linear fractional-delay interpolation), see
sim_hw/fibre.py for the pass timing; actuators, AOM and laser phase have
their own history lines (forward c(t - tau), round trip c(t) + c(t - 2 tau),
laser phi_L(t) - phi_L(t - tau_rt) from the stored common laser phase). The
I/Q and the truth are averages over the S internal samples of the tick.

Noise: per-channel xoshiro256** streams (sim_hw/rng.py, ziggurat normals)
and one common stream (the laser), so a channel's noise depends on (seed,
channel) only, whatever the order or grouping of the channels (4 or 40
channels, serial or threaded). Acoustic noise: exact discretisation of
the two-pole filter (Van Loan); the tick average is the trapezoid of the
end points (the PSD differs from the integrate-and-dump average by < 0.02 dB
below 2 kHz). Thermal: the random walk is drawn every M ticks
(thermal_update_ticks) and followed linearly (see scenarios.py for its PSD).

Speed: about 0.1 us per channel-tick for the lumped model (rig_run,
tools/bench/rig.py). Call rig_step from jitted code (a fused co-simulation
loop): from Python each call unboxes the two namedtuples, ~20 us.
"""
from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from numba import njit

from . import constants as C
from .discretise import chol2, lyapunov_stationary, van_loan, zoh_with_average
from .fibre import MAX_FW_PASSES, MAX_RT_PASSES, forward_passes, pass_delays, to_steps
from .rng import normal, normal_pair, normals4, seed_streams
from .scenarios import Scenario, draw_blade, geometry_of, get_scenario
from .frontend import channel_garbage_keys, garbage, quantise
from .trig import sinc_pi, sincos_turns

__all__ = ["RigConfig", "RigState", "build_rig", "rig_step", "rig_run",
           "insert_blade", "remove_blade", "apply_fault", "static_oneway_s",
           "MODEL_LUMPED", "MODEL_SEGMENTED"]

MODEL_LUMPED = 0
MODEL_SEGMENTED = 1

RigConfig = namedtuple("RigConfig", [
    "n_channels",            # channels N
    "model",                 # MODEL_LUMPED or MODEL_SEGMENTED
    "tick_s",                # loop tick T (s)
    "loop_rate_hz",          # 1/T (Hz)
    "substeps",              # internal steps per tick S (segmented)
    "dt_s",                  # internal step T/S (s)
    "n_segments",            # fibre segments K (segmented)
    "hist_len",              # delay-line ring length H (internal steps)
    "thermal_update_ticks",  # thermal random-walk draw interval M (ticks)
    "pzt_mid", "pzt_max",    # PZT DAC mid-scale 2^19, largest code 2^20-1
    "spool_mid", "spool_max",
    "pzt_s_per_code",        # one-way s per PZT code (3.81 as)
    "spool_s_per_code",      # one-way s per spool code (1.53 fs)
    "aom_hz_per_ftw",        # Hz per DDS tuning-word code (0.233 Hz)
    "pzt_phi", "pzt_gam",    # PZT ZOH step over T: x' = phi x + gam u, x = (pos s, vel s/s)
    "pzt_pa", "pzt_ga",      # PZT tick average: pos_avg = pa . x + ga u
    "pzt_phi_dt", "pzt_gam_dt",  # PZT ZOH step over dt (segmented)
    "spool_oma", "spool_avg_k", "spool_oma_dt",  # 1 - exp(-T/tau), tau/T (1-exp(-T/tau)), dt version
    "ac_phi", "ac_chol",     # acoustic unit process over T: x' = phi x + L g (chol l11, l21, l22)
    "ac_lphi", "ac_lchol",   # lumped (rack) acoustic process, M = 1 + edge order states: Phi, lower Cholesky of Q
    "ac_phi_dt", "ac_chol_dt",   # same over dt (segmented)
    "optical_period_s",      # T_opt (s): round-trip turn = T_opt of round-trip delay
    "laser_sigma_rad",       # sqrt(2 pi dnu T): laser Wiener increment per tick (rad)
    "laser_sigma_rad_dt",    # same per internal step
    "temp_ramp_k_per_tick",  # common ramp (K per tick)
    "temp_rw_k_per_update",  # random-walk step RMS per thermal update (K)
    "pol_sigma_rad_per_update",  # polarisation random-walk step per update (rad)
    "amp_nominal_lsb",       # beat amplitude at 0 dB loss (LSB)
    "iq_noise_lsb",          # I/Q noise per quadrature (LSB RMS)
    "adc_max", "adc_min",    # int16 rails
    "glitch_key",            # uint64[N]: each channel's hash key of its ADC garbage
    "group_delay_s_per_m",   # fibre group delay (s/m), for insert_blade
    "tcd_s_per_k_m",         # thermal coefficient of delay (s/(K m))
    "acoustic_s0_per_m",     # acoustic low-frequency PSD level per metre (s^2/Hz/m)
    "laser_linewidth_hz",    # Lorentzian FWHM (Hz)
])

RigState = namedtuple("RigState", [
    # --- blade / link (set by build_rig and insert_blade) ---
    "present",               # uint8: 1 blade in; 0 removed: I/Q noise only, truth NaN
    "geometry",              # int64: GEOM_RACK / GEOM_DISTRIBUTED / GEOM_FOLDED
    "length_m",              # link length (m)
    "tau_s",                 # static one-way fibre delay (s)
    "tau_rt_s",              # static round-trip delay (s)
    "ac_amp_s",              # acoustic scale: seconds per unit process (lumped) or per segment
    "tcd_l_s_per_k",         # TCD * L (s/K)
    "seg_theta_w",           # share of the link's thermal delay per segment pass
    "laser_scale_turns",     # lumped: laser turns per unit common draw
    "phi0_turns",            # static round-trip phase (turns, [0, 1))
    "blade_serial",          # uint64 serial of the blade
    "blade_oneway_offset_s", # blade's calibrated internal one-way delay (s), not seen by the round trip
    "loss_db",               # connector loss of the return (dB of power)
    "faraday",               # uint8: 1 Faraday mirror (default), 0: polarisation fading
    # --- fault hooks (the caller may set these between steps) ---
    "fade_db",               # extra attenuation of the return (dB), default 0
    "detune_hz",             # optical frequency offset of the return (Hz): beat rotates, truth unaffected
    "asym_s",                # non-reciprocal delay on the return path (s): round trip only
    "pzt_stuck",             # uint8: PZT ignores new codes (keeps the latched one)
    "spool_stuck",           # uint8: spool ignores new codes
    "adc_glitch_remaining",  # int32: ticks of ADC garbage still to come (decremented)
    "phase_jump_s",          # one-off jump of the true delay (s) at the next tick, then cleared
    # --- flags ---
    "adc_overrange",         # uint8: a quadrature clipped during the last tick
    # --- dynamic state ---
    "pzt_code_applied", "spool_code_applied", "aom_ftw_applied",  # int32 latched codes
    "aom_hz_prev",           # AOM offset during the previous interval (Hz)
    "pzt_x", "pzt_v",        # PZT one-way delay (s) and its rate (s/s)
    "spool_y",               # spool one-way delay (s)
    "aom_phase_turns",       # integral of the AOM offset (turns)
    "ac_x",                  # (N, M) lumped acoustic unit process, state 0 the output
    "ac_new", "ac_g",        # (N, M), (N, 8) scratch of the lumped acoustic step
    "temp_k", "temp_rate_k_per_tick",  # temperature deviation (K) and its rate
    "pol_angle_rad",         # polarisation angle (no Faraday mirror)
    "detune_phase_turns",    # accumulated detune phase (turns, wrapped)
    "jump_offset_s",         # sum of phase jumps so far (s)
    "amp_key_db", "amp_lsb", # cache of A for loss + fade (recomputed on change)
    "tick",                  # int64[1]: ticks done
    "rng",                   # uint64 (N, 4): per-channel xoshiro256** states
    "rng_common",            # uint64 (1, 4): the laser's stream
    "laser_draw",            # float64[1]: the common laser draw of the last tick
    # --- segmented model (size-1 placeholders in the lumped model) ---
    "hist_pos",              # int64[1]: internal steps done (+ H)
    "ac_seg",                # (N, K, 2) acoustic unit processes of the segments
    "seg_hist",              # (N, K, H) segment delays (s) at internal steps
    "act_hist",              # (N, H) near-end actuator delay (s)
    "laser_hist",            # (H,) common laser phase (rad)
    "rt_D", "rt_f", "rt_w",  # (N, K, 4) round-trip pass delays (steps, fraction, weight)
    "fw_D", "fw_f", "fw_w",  # (N, K, 2) forward pass delays
    "act_rt_D", "act_rt_f",  # actuator round-trip delay tau_rt (steps, fraction)
    "act_fw_D", "act_fw_f",  # actuator forward delay tau
])


# ----------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------
# numba passes a namedtuple of arrays to a non-inlined njit function (and to
# an inline="always" one) member by member with a reference count each: about
# 1 us for this state, 25 ns per channel of a 40-channel tick. So the
# per-channel physics is written out inside the channel loop of rig_step
# itself (one pass per tick); helpers take scalars and single arrays only.
# Channels never share state (each has its own noise stream; the one common
# stream, the laser, is drawn before the channel loop), so a channel loop
# split over threads would give the same numbers.

@njit(cache=True)
def _read(line, pos, H, D, f):
    """x(t_pos - (D + f) dt) from a ring line (1-D view): linear interpolation."""
    a = line[(pos - D) % H]
    return a + f * (line[(pos - D - 1) % H] - a)


@njit(cache=True)
def _segmented_tick(cfg, st, k, pzt_code, spool_code, aom_ftw, adc_i, adc_q, truth):
    """One tick of every segmented (long) channel: S internal steps of the
    laser line, segment noises, actuators and delay lines; averages of the
    S samples."""
    S = cfg.substeps
    K = cfg.n_segments
    H = cfg.hist_len
    dt = cfg.dt_s
    Topt = cfg.optical_period_s
    M = cfg.thermal_update_ticks
    pos0 = st.hist_pos[0]
    for s in range(S):                      # the common laser phase line
        g, _ = normal_pair(st.rng_common, 0)
        pos = pos0 + s + 1
        st.laser_hist[pos % H] = st.laser_hist[(pos - 1) % H] + cfg.laser_sigma_rad_dt * g
    ph00 = cfg.ac_phi_dt[0, 0]
    ph01 = cfg.ac_phi_dt[0, 1]
    ph10 = cfg.ac_phi_dt[1, 0]
    ph11 = cfg.ac_phi_dt[1, 1]
    l11 = cfg.ac_chol_dt[0]
    l21 = cfg.ac_chol_dt[1]
    l22 = cfg.ac_chol_dt[2]
    rng = st.rng
    for i in range(cfg.n_channels):
        if k % M == 0:
            gt, gp = normal_pair(rng, i)
            st.temp_rate_k_per_tick[i] = cfg.temp_ramp_k_per_tick + \
                cfg.temp_rw_k_per_update * gt / M
            st.pol_angle_rad[i] += cfg.pol_sigma_rad_per_update * gp
        if st.phase_jump_s[i] != 0.0:
            st.jump_offset_s[i] += st.phase_jump_s[i]
            st.phase_jump_s[i] = 0.0
        jump = st.jump_offset_s[i]
        u = (st.pzt_code_applied[i] - cfg.pzt_mid) * cfg.pzt_s_per_code
        us = (st.spool_code_applied[i] - cfg.spool_mid) * cfg.spool_s_per_code
        df = st.aom_ftw_applied[i] * cfg.aom_hz_per_ftw
        st.aom_hz_prev[i] = df
        a = st.ac_amp_s[i]
        thw = st.tcd_l_s_per_k[i] * st.seg_theta_w[i]
        rate = st.temp_rate_k_per_tick[i] / S
        ddt = st.detune_hz[i] * dt
        acts = st.act_hist[i]
        aD = st.act_rt_D[i]
        af = st.act_rt_f[i]
        acc_c = 0.0
        acc_s = 0.0
        acc_fw = 0.0
        for s in range(S):
            pos = pos0 + s + 1
            w = pos % H
            temp = st.temp_k[i] + rate
            st.temp_k[i] = temp
            theta = thw * temp              # this pass's share of TCD L dT
            rt = 0.0
            fw = 0.0
            for j in range(K):
                g1, g2 = normal_pair(rng, i)
                x1 = st.ac_seg[i, j, 0]
                x2 = st.ac_seg[i, j, 1]
                n1 = ph00 * x1 + ph01 * x2 + l11 * g1
                st.ac_seg[i, j, 1] = ph10 * x1 + ph11 * x2 + l21 * g1 + l22 * g2
                st.ac_seg[i, j, 0] = n1
                line = st.seg_hist[i, j]
                line[w] = a * n1 + theta
                for p in range(MAX_RT_PASSES):
                    wgt = st.rt_w[i, j, p]
                    if wgt != 0.0:
                        rt += wgt * _read(line, pos, H, st.rt_D[i, j, p], st.rt_f[i, j, p])
                for p in range(MAX_FW_PASSES):
                    wgt = st.fw_w[i, j, p]
                    if wgt != 0.0:
                        fw += wgt * _read(line, pos, H, st.fw_D[i, j, p], st.fw_f[i, j, p])
            p0 = st.pzt_x[i]
            v0 = st.pzt_v[i]
            st.pzt_x[i] = cfg.pzt_phi_dt[0, 0] * p0 + cfg.pzt_phi_dt[0, 1] * v0 + \
                cfg.pzt_gam_dt[0] * u
            st.pzt_v[i] = cfg.pzt_phi_dt[1, 0] * p0 + cfg.pzt_phi_dt[1, 1] * v0 + \
                cfg.pzt_gam_dt[1] * u
            st.spool_y[i] += (us - st.spool_y[i]) * cfg.spool_oma_dt
            st.aom_phase_turns[i] += df * dt
            act = st.pzt_x[i] + st.spool_y[i] + Topt * st.aom_phase_turns[i] + jump
            acts[w] = act
            rt += act + _read(acts, pos, H, aD, af) + st.asym_s[i]
            fw += _read(acts, pos, H, st.act_fw_D[i], st.act_fw_f[i])
            laser = (st.laser_hist[w] - _read(st.laser_hist, pos, H, aD, af)) / C.TWO_PI
            d = st.detune_phase_turns[i] + ddt
            st.detune_phase_turns[i] = d - math.floor(d)
            sn, cs = sincos_turns(rt / Topt + laser + d + st.phi0_turns[i])
            acc_c += cs
            acc_s += sn
            acc_fw += fw
        key = st.loss_db[i] + st.fade_db[i]
        if key != st.amp_key_db[i]:
            st.amp_key_db[i] = key
            st.amp_lsb[i] = cfg.amp_nominal_lsb * 10.0 ** (-key / 20.0)
        amp = st.amp_lsb[i] / S
        if st.faraday[i] == 0:
            amp *= abs(math.cos(st.pol_angle_rad[i]))
        if st.present[i] == 0:
            amp = 0.0
        gi, gq = normal_pair(rng, i)
        xi, oi = quantise(amp * acc_c + cfg.iq_noise_lsb * gi, cfg.adc_min, cfg.adc_max)
        xq, oq = quantise(amp * acc_s + cfg.iq_noise_lsb * gq, cfg.adc_min, cfg.adc_max)
        over = oi | oq
        if st.adc_glitch_remaining[i] > 0:
            xi, xq, over = garbage(cfg.glitch_key[i], k, cfg.adc_min, cfg.adc_max)
            st.adc_glitch_remaining[i] -= 1
        adc_i[i] = np.int16(xi)
        adc_q[i] = np.int16(xq)
        st.adc_overrange[i] = over
        truth[i] = acc_fw / S if st.present[i] != 0 else np.nan
        if st.pzt_stuck[i] == 0:
            st.pzt_code_applied[i] = min(max(pzt_code[i], 0), cfg.pzt_max)
        if st.spool_stuck[i] == 0:
            st.spool_code_applied[i] = min(max(spool_code[i], 0), cfg.spool_max)
        st.aom_ftw_applied[i] = aom_ftw[i]
    st.hist_pos[0] = pos0 + S


@njit(cache=True)
def rig_step(cfg, st, pzt_code, spool_code, aom_ftw, adc_i, adc_q, true_delay_s):
    """Advance every channel by one loop tick (no allocation).

    Inputs (length N): pzt_code int32 (20-bit DAC code 0..2^20-1, mid-scale
    2^19 = no displacement, +-2 ps one-way full scale; clamped to the DAC
    range), spool_code int32 (16-bit, mid 32768, +-50 ps one-way, first-order
    30 s response; clamped), aom_ftw int32 (signed DDS tuning-word offset,
    df = ftw * 1e9 / 2^32 Hz, integrated into the optical phase; a positive
    offset adds one-way delay at df * T_opt per second and turns the
    round-trip phase by +2 df turns per second, the AOM being double-passed).
    Outputs written in place (length N): adc_i, adc_q int16 (the I/Q of this
    tick, averaged over it), true_delay_s float64 (forward one-way delay
    deviation at the blade averaged over the tick, s; NaN when no blade).

    Latency: the codes passed to call j are latched and held during the
    interval of call j+1, so they first show in the outputs of call j+1; a
    code the bank computes from the ADC sample of call k (and passes to call
    k+1) first shows in the ADC sample of call k+2.
    """
    k = st.tick[0]
    if cfg.model != MODEL_LUMPED:
        _segmented_tick(cfg, st, k, pzt_code, spool_code, aom_ftw, adc_i, adc_q,
                        true_delay_s)
        st.tick[0] = k + 1
        return
    # Lumped (rack) channels, written out here rather than in a helper: see
    # the note above the kernels (one namedtuple pass per tick, not two).
    g_laser, _ = normal_pair(st.rng_common, 0)     # the common laser draw
    st.laser_draw[0] = g_laser
    T = cfg.tick_s
    inv_T = 1.0 / T
    inv_Topt = 1.0 / cfg.optical_period_s
    Topt = cfg.optical_period_s
    M = cfg.thermal_update_ticks
    ac_phi = cfg.ac_lphi
    ac_chol = cfg.ac_lchol
    ac_x = st.ac_x
    ac_new = st.ac_new
    ac_g = st.ac_g
    n_ac = ac_phi.shape[0]
    pa0 = cfg.pzt_pa[0]
    pa1 = cfg.pzt_pa[1]
    ga = cfg.pzt_ga
    f00 = cfg.pzt_phi[0, 0]
    f01 = cfg.pzt_phi[0, 1]
    f10 = cfg.pzt_phi[1, 0]
    f11 = cfg.pzt_phi[1, 1]
    gm0 = cfg.pzt_gam[0]
    gm1 = cfg.pzt_gam[1]
    rng = st.rng
    slow = k % M == 0
    for i in range(cfg.n_channels):
        # slow processes: thermal random walk (rate piecewise constant
        # over M ticks) and the polarisation angle
        if slow:
            gt = normal(rng, i)
            gp = normal(rng, i)
            st.temp_rate_k_per_tick[i] = cfg.temp_ramp_k_per_tick + \
                cfg.temp_rw_k_per_update * gt / M
            st.pol_angle_rad[i] += cfg.pol_sigma_rad_per_update * gp

        # acoustic unit process (M states, Butterworth edge): exact step
        # (Van Loan: x' = Phi x + L g, L the Cholesky factor of the tick's
        # process covariance), trapezoid average of the output state 0
        ac_g[i, 0], ac_g[i, 1], ac_g[i, 2], ac_g[i, 3] = normals4(rng, i)
        if n_ac > 2:
            ac_g[i, 4], ac_g[i, 5], ac_g[i, 6], ac_g[i, 7] = normals4(rng, i)
            gi = ac_g[i, 6]
            gq = ac_g[i, 7]
        else:
            gi = ac_g[i, 2]
            gq = ac_g[i, 3]
        for r in range(n_ac):
            v = 0.0
            for j in range(n_ac):
                v += ac_phi[r, j] * ac_x[i, j]
            for j in range(r + 1):
                v += ac_chol[r, j] * ac_g[i, j]
            ac_new[i, r] = v
        x1 = ac_x[i, 0]
        n1 = ac_new[i, 0]
        for r in range(n_ac):
            ac_x[i, r] = ac_new[i, r]
        a = st.ac_amp_s[i]
        tl = st.tcd_l_s_per_k[i]
        t0 = st.temp_k[i]
        t1 = t0 + st.temp_rate_k_per_tick[i]
        st.temp_k[i] = t1
        fib_avg = a * 0.5 * (x1 + n1) + tl * 0.5 * (t0 + t1)   # s
        fib_step = a * (n1 - x1) + tl * (t1 - t0)              # s over the tick

        if st.phase_jump_s[i] != 0.0:
            st.jump_offset_s[i] += st.phase_jump_s[i]
            st.phase_jump_s[i] = 0.0
        jump = st.jump_offset_s[i]

        # PZT: exact ZOH step and tick average of the resonance
        u = (st.pzt_code_applied[i] - cfg.pzt_mid) * cfg.pzt_s_per_code
        p0 = st.pzt_x[i]
        v0 = st.pzt_v[i]
        p_avg = pa0 * p0 + pa1 * v0 + ga * u
        p1 = f00 * p0 + f01 * v0 + gm0 * u
        st.pzt_v[i] = f10 * p0 + f11 * v0 + gm1 * u
        st.pzt_x[i] = p1
        # spool: first order, exact step and average
        us = (st.spool_code_applied[i] - cfg.spool_mid) * cfg.spool_s_per_code
        y0 = st.spool_y[i]
        y1 = y0 + (us - y0) * cfg.spool_oma
        y_avg = us + (y0 - us) * cfg.spool_avg_k
        st.spool_y[i] = y1
        act_avg = p_avg + y_avg
        act_step = (p1 - p0) + (y1 - y0)

        # AOM (-1 order), Phi in turns, df piecewise constant per tick
        df = st.aom_ftw_applied[i] * cfg.aom_hz_per_ftw
        ddf = df - st.aom_hz_prev[i]
        st.aom_hz_prev[i] = df
        ph0 = st.aom_phase_turns[i]
        ph_avg = ph0 + 0.5 * df * T
        st.aom_phase_turns[i] = ph0 + df * T
        tau = st.tau_s[i]
        trt = st.tau_rt_s[i]
        aom_fw = ph_avg - df * tau + 0.5 * ddf * tau * tau * inv_T
        aom_rt = 2.0 * ph_avg - df * trt + 0.5 * ddf * trt * trt * inv_T

        # truth: forward one-way delay deviation at the blade (tick average)
        fw = fib_avg - 0.5 * tau * fib_step * inv_T + act_avg - \
            tau * act_step * inv_T + jump + Topt * aom_fw
        # measured round trip (s, then turns)
        rt_s = 2.0 * fib_avg - trt * fib_step * inv_T + 2.0 * act_avg - \
            trt * act_step * inv_T + 2.0 * jump + st.asym_s[i]
        d0 = st.detune_phase_turns[i]
        dd = st.detune_hz[i] * T
        d1 = d0 + dd
        st.detune_phase_turns[i] = d1 - math.floor(d1)
        rt_turns = rt_s * inv_Topt + aom_rt + st.laser_scale_turns[i] * g_laser + \
            (d0 + 0.5 * dd) + st.phi0_turns[i]
        motion = 2.0 * (fib_step + act_step) * inv_Topt + 2.0 * df * T + dd

        # amplitude: loss + fade (cached), polarisation, presence, motion
        key = st.loss_db[i] + st.fade_db[i]
        if key != st.amp_key_db[i]:
            st.amp_key_db[i] = key
            st.amp_lsb[i] = cfg.amp_nominal_lsb * 10.0 ** (-key / 20.0)
        amp = st.amp_lsb[i] * sinc_pi(motion)
        if st.faraday[i] == 0:
            amp *= abs(math.cos(st.pol_angle_rad[i]))
        if st.present[i] == 0:
            amp = 0.0

        # front end: I/Q, noise, rounding, clipping, glitches
        sn, cs = sincos_turns(rt_turns)
        xi, oi = quantise(amp * cs + cfg.iq_noise_lsb * gi, cfg.adc_min, cfg.adc_max)
        xq, oq = quantise(amp * sn + cfg.iq_noise_lsb * gq, cfg.adc_min, cfg.adc_max)
        over = oi | oq
        if st.adc_glitch_remaining[i] > 0:
            xi, xq, over = garbage(cfg.glitch_key[i], k, cfg.adc_min, cfg.adc_max)
            st.adc_glitch_remaining[i] -= 1
        adc_i[i] = np.int16(xi)
        adc_q[i] = np.int16(xq)
        st.adc_overrange[i] = over
        true_delay_s[i] = fw if st.present[i] != 0 else np.nan

        # latch the codes of this call for the next interval
        if st.pzt_stuck[i] == 0:
            st.pzt_code_applied[i] = min(max(pzt_code[i], 0), cfg.pzt_max)
        if st.spool_stuck[i] == 0:
            st.spool_code_applied[i] = min(max(spool_code[i], 0), cfg.spool_max)
        st.aom_ftw_applied[i] = aom_ftw[i]
    st.tick[0] = k + 1


@njit(cache=True)
def _rig_run(cfg, st, pzt_code, spool_code, aom_ftw, n_ticks,
             adc_i_out, adc_q_out, truth_out):
    for t in range(n_ticks):
        rig_step(cfg, st, pzt_code, spool_code, aom_ftw,
                 adc_i_out[t], adc_q_out[t], truth_out[t])


def rig_run(cfg, st, pzt_code, spool_code, aom_ftw, n_ticks, adc_i_out=None,
            adc_q_out=None, truth_out=None):
    """n_ticks open-loop steps with constant codes (batch helper).

    Outputs [n_ticks, N] (allocated when None) and returned as
    (adc_i, adc_q, truth): n_ticks calls of rig_step in one jitted loop.
    """
    n = int(n_ticks)
    N = cfg.n_channels
    if adc_i_out is None:
        adc_i_out = np.empty((n, N), np.int16)
    if adc_q_out is None:
        adc_q_out = np.empty((n, N), np.int16)
    if truth_out is None:
        truth_out = np.empty((n, N), np.float64)
    pz = np.ascontiguousarray(pzt_code, dtype=np.int32)
    sp = np.ascontiguousarray(spool_code, dtype=np.int32)
    ao = np.ascontiguousarray(aom_ftw, dtype=np.int32)
    _rig_run(cfg, st, pz, sp, ao, n, adc_i_out, adc_q_out, truth_out)
    return adc_i_out, adc_q_out, truth_out


@njit(cache=True)
def _prefill(cfg, st):
    """Fill the delay lines with H internal steps of stationary history."""
    H = cfg.hist_len
    K = cfg.n_segments
    for s in range(H):
        g, _ = normal_pair(st.rng_common, 0)
        prev = st.laser_hist[s - 1] if s > 0 else 0.0
        st.laser_hist[s] = prev + cfg.laser_sigma_rad_dt * g
    for i in range(cfg.n_channels):
        a = st.ac_amp_s[i]
        theta = st.tcd_l_s_per_k[i] * st.seg_theta_w[i] * st.temp_k[i]
        for s in range(H):
            for j in range(K):
                g1, g2 = normal_pair(st.rng, i)
                x1 = st.ac_seg[i, j, 0]
                x2 = st.ac_seg[i, j, 1]
                n1 = cfg.ac_phi_dt[0, 0] * x1 + cfg.ac_phi_dt[0, 1] * x2 + cfg.ac_chol_dt[0] * g1
                st.ac_seg[i, j, 1] = cfg.ac_phi_dt[1, 0] * x1 + cfg.ac_phi_dt[1, 1] * x2 + \
                    cfg.ac_chol_dt[1] * g1 + cfg.ac_chol_dt[2] * g2
                st.ac_seg[i, j, 0] = n1
                st.seg_hist[i, j, s] = a * n1 + theta
    st.hist_pos[0] = 2 * H - 1     # the last written sample is at H-1 (mod H)


# ----------------------------------------------------------------------------
# build
# ----------------------------------------------------------------------------

_SALT_BLADE = 0xB1ADE
_SALT_NOISE = 0x7015E
_COMMON_STREAM = 0xFFFF_FFFF_0000_0001


def _acoustic_lumped(scenario: Scenario):
    """(A, B) of the lumped unit acoustic process: white w (unit two-sided
    PSD) -> Butterworth low-pass of order n at the upper corner -> first-order
    low-pass at the lower corner (state 0, the output), so state 0 has the
    one-sided PSD 2/((1+(f/f1)^2)(1+(f/f2)^(2n))). n = 1 is `_acoustic_unit`."""
    n = int(scenario.acoustic_edge_order)
    if n == 1:
        return _acoustic_unit(scenario)
    from scipy import signal
    w1 = C.TWO_PI * scenario.acoustic_corner_lo_hz
    w2 = C.TWO_PI * scenario.acoustic_corner_hi_hz
    Ab, Bb, Cb, Db = signal.zpk2ss(*signal.butter(n, w2, analog=True, output="zpk"))
    M = n + 1
    A = np.zeros((M, M))
    A[0, 0] = -w1
    A[0, 1:] = w1 * Cb[0]
    A[1:, 1:] = Ab
    B = np.zeros(M)
    B[1:] = Bb[:, 0]
    return A, B


def _acoustic_unit(scenario: Scenario):
    """(A, B) of the unit acoustic process: x2' = w2 (w - x2), x1' = w1 (x2 - x1),
    w white of unit two-sided PSD, so x1 has one-sided PSD 2/((1+(f/f1)^2)(1+(f/f2)^2))."""
    w1 = C.TWO_PI * scenario.acoustic_corner_lo_hz
    w2 = C.TWO_PI * scenario.acoustic_corner_hi_hz
    A = np.array([[-w1, w1], [0.0, -w2]])
    B = np.array([0.0, w2])
    return A, B


def _pzt_model(scenario: Scenario):
    """PZT: p'' + (w0/Q) p' + w0^2 p = w0^2 u, u the commanded delay (s)."""
    w0 = C.TWO_PI * scenario.pzt_resonance_hz
    A = np.array([[0.0, 1.0], [-w0 * w0, -w0 / scenario.pzt_q]])
    B = np.array([0.0, w0 * w0])
    return A, B


def _c(x):
    """C-contiguous float64 copy (numba types it 'C': cheaper indexing)."""
    return np.ascontiguousarray(np.array(x, dtype=np.float64))


def _link_params(cfg, geometry, length_m):
    """Per-channel derived link parameters (dict) for a blade of length_m."""
    n_segments, dt_s, tick_s, H = cfg.n_segments, cfg.dt_s, cfg.tick_s, cfg.hist_len
    if not (length_m > 0 and math.isfinite(length_m)):
        raise ValueError(f"link length must be positive and finite, got {length_m}")
    g = C.GEOMETRY_CODES[geometry]
    tau = length_m * cfg.group_delay_s_per_m
    trt = 2.0 * tau
    s0 = cfg.acoustic_s0_per_m * length_m
    p = {"geometry": g, "length_m": length_m, "tau_s": tau, "tau_rt_s": trt,
         "tcd_l_s_per_k": cfg.tcd_s_per_k_m * length_m}
    # static phase: round-trip delay in optical periods, fractional part
    cyc = trt / C.OPTICAL_PERIOD_S
    p["phi0_turns"] = cyc - math.floor(cyc)
    if g == C.GEOM_RACK:
        if trt > 0.5 * tick_s:
            raise ValueError(f"link of {length_m} m is too long for the lumped model "
                             f"(round trip {trt:.3g} s > T/2): use a segmented scenario")
        p["ac_amp_s"] = math.sqrt(s0 / 2.0)
        p["seg_theta_w"] = 1.0
        sig = math.sqrt(C.TWO_PI * cfg.laser_linewidth_hz * tick_s)
        p["laser_scale_turns"] = sig * trt * math.sqrt(1.0 - trt / (3.0 * tick_s)) / \
            (tick_s * C.TWO_PI)
        p["tables"] = None
    else:
        P = forward_passes(g)
        p["ac_amp_s"] = math.sqrt(s0 / (2.0 * n_segments * P * P))
        p["seg_theta_w"] = 1.0 / (n_segments * P)
        p["laser_scale_turns"] = 0.0
        rt_d, rt_w, fw_d, fw_w = pass_delays(g, tau, n_segments)
        if trt / dt_s + 2 >= H:
            raise ValueError(f"link of {length_m} m exceeds the delay lines "
                             f"({H} internal steps)")
        rt_D, rt_f = to_steps(rt_d, dt_s)
        fw_D, fw_f = to_steps(fw_d, dt_s)
        aD, af = to_steps(np.array([trt, tau]), dt_s)
        p["tables"] = (rt_D, rt_f, rt_w, fw_D, fw_f, fw_w, aD, af)
    return p


def _apply_link(st, ch, p):
    for name in ("geometry", "length_m", "tau_s", "tau_rt_s", "ac_amp_s",
                 "tcd_l_s_per_k", "seg_theta_w", "laser_scale_turns", "phi0_turns"):
        getattr(st, name)[ch] = p[name]
    if p["tables"] is not None:
        rt_D, rt_f, rt_w, fw_D, fw_f, fw_w, aD, af = p["tables"]
        st.rt_D[ch], st.rt_f[ch], st.rt_w[ch] = rt_D, rt_f, rt_w
        st.fw_D[ch], st.fw_f[ch], st.fw_w[ch] = fw_D, fw_f, fw_w
        st.act_rt_D[ch], st.act_fw_D[ch] = aD
        st.act_rt_f[ch], st.act_fw_f[ch] = af


def build_rig(scenario, n_channels=None, seed=0, *, loop_rate_hz=None):
    """(RigConfig, RigState) of a rig of n_channels links, deterministic in seed.

    scenario: a Scenario or its name. n_channels: default the scenario's
    (at most scenario.max_channels). loop_rate_hz: default the scenario's.
    Channel i's blade (length, loss, serial, offset) and noise depend only on
    (seed, i): a 4-channel rig is the first 4 channels of a 40-channel one.
    """
    if isinstance(scenario, str):
        scenario = get_scenario(scenario)
    N = scenario.n_channels if n_channels is None else int(n_channels)
    if not 1 <= N <= scenario.max_channels:
        raise ValueError(f"{scenario.name}: n_channels must be in 1..{scenario.max_channels}, got {N}")
    if scenario.dac_latency_ticks != 1:
        raise ValueError("the rig latches codes for the next tick: dac_latency_ticks must be 1")
    rate = float(scenario.loop_rate_hz if loop_rate_hz is None else loop_rate_hz)
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"loop_rate_hz must be positive and finite, got {loop_rate_hz}")
    T = 1.0 / rate
    geoms = [geometry_of(scenario, i) for i in range(N)]
    segmented = any(g != "rack" for g in geoms)
    if segmented and any(g == "rack" for g in geoms):
        raise ValueError("a rig is either all rack (lumped) or all long links")
    model = MODEL_SEGMENTED if segmented else MODEL_LUMPED
    S = int(scenario.internal_steps_per_tick) if segmented else 1
    K = int(scenario.n_segments) if segmented else 1
    dt = T / S
    if segmented:
        tau_max = max(scenario.link_length_max_m,
                      max(scenario.link_lengths_m, default=0.0)) * scenario.group_delay_s_per_m
        H = int(math.ceil(2.0 * tau_max / dt)) + 4
    else:
        H = 1
    M = max(1, int(round(scenario.thermal_update_s * rate)))

    # --- linear models, discretised exactly ---
    Ap, Bp = _pzt_model(scenario)
    pphi, pgam, ppa, pga = zoh_with_average(Ap, Bp, T)
    pphi_dt, pgam_dt, _, _ = zoh_with_average(Ap, Bp, dt)
    Aa, Ba = _acoustic_unit(scenario)
    aphi, aQ = van_loan(Aa, Ba, T)
    aphi_dt, aQ_dt = van_loan(Aa, Ba, dt)
    P_stat = lyapunov_stationary(Aa, Ba)
    Al, Bl = _acoustic_lumped(scenario)
    lphi, lQ = van_loan(Al, Bl, T)
    n_ac = Al.shape[0]
    lchol = np.linalg.cholesky(lQ + 1e-30 * np.max(np.abs(lQ)) * np.eye(n_ac))
    Pl_stat = lyapunov_stationary(Al, Bl)
    x = T / scenario.spool_tau_s
    oma = -math.expm1(-x)
    oma_dt = -math.expm1(-dt / scenario.spool_tau_s)
    D = C.TWO_PI * scenario.laser_linewidth_hz
    cfg = RigConfig(
        n_channels=N, model=model, tick_s=T, loop_rate_hz=rate, substeps=S, dt_s=dt,
        n_segments=K, hist_len=H, thermal_update_ticks=M,
        pzt_mid=1 << (scenario.pzt_dac_bits - 1), pzt_max=(1 << scenario.pzt_dac_bits) - 1,
        spool_mid=1 << (scenario.spool_dac_bits - 1),
        spool_max=(1 << scenario.spool_dac_bits) - 1,
        pzt_s_per_code=scenario.pzt_s_per_code, spool_s_per_code=scenario.spool_s_per_code,
        aom_hz_per_ftw=scenario.aom_hz_per_ftw,
        pzt_phi=_c(pphi), pzt_gam=_c(pgam), pzt_pa=_c(ppa[0]), pzt_ga=float(pga[0]),
        pzt_phi_dt=_c(pphi_dt), pzt_gam_dt=_c(pgam_dt),
        spool_oma=oma, spool_avg_k=oma / x, spool_oma_dt=oma_dt,
        ac_phi=_c(aphi), ac_chol=_c(chol2(aQ)), ac_lphi=_c(lphi), ac_lchol=_c(lchol),
        ac_phi_dt=_c(aphi_dt), ac_chol_dt=_c(chol2(aQ_dt)),
        optical_period_s=C.OPTICAL_PERIOD_S,
        laser_sigma_rad=math.sqrt(D * T), laser_sigma_rad_dt=math.sqrt(D * dt),
        temp_ramp_k_per_tick=scenario.temp_ramp_k_per_s * T,
        temp_rw_k_per_update=scenario.temp_rw_k_per_sqrt_s * math.sqrt(M * T),
        pol_sigma_rad_per_update=scenario.pol_drift_rad_per_sqrt_s * math.sqrt(M * T),
        amp_nominal_lsb=float(scenario.adc_amplitude_lsb),
        iq_noise_lsb=scenario.iq_noise_lsb_rms(rate),
        adc_max=float((1 << (scenario.adc_bits - 1)) - 1),
        adc_min=float(-(1 << (scenario.adc_bits - 1))),
        glitch_key=channel_garbage_keys(seed_streams(seed, [0xBAD])[0, 0], N),
        group_delay_s_per_m=scenario.group_delay_s_per_m,
        tcd_s_per_k_m=scenario.tcd_s_per_k_m,
        acoustic_s0_per_m=float(scenario.acoustic_s0_s2_per_hz(1.0)),
        laser_linewidth_hz=scenario.laser_linewidth_hz,
    )

    f64 = lambda: np.zeros(N)
    u8 = lambda v=0: np.full(N, v, np.uint8)
    i32 = lambda v=0: np.full(N, v, np.int32)
    Kx, Hx = (K, H) if segmented else (1, 1)
    Nx = N if segmented else 1
    st = RigState(
        present=u8(1), geometry=np.zeros(N, np.int64), length_m=f64(), tau_s=f64(),
        tau_rt_s=f64(), ac_amp_s=f64(), tcd_l_s_per_k=f64(), seg_theta_w=f64(),
        laser_scale_turns=f64(), phi0_turns=f64(),
        blade_serial=np.zeros(N, np.uint64), blade_oneway_offset_s=f64(), loss_db=f64(),
        faraday=u8(1 if scenario.faraday_mirror else 0),
        fade_db=f64(), detune_hz=f64(), asym_s=f64(), pzt_stuck=u8(), spool_stuck=u8(),
        adc_glitch_remaining=i32(), phase_jump_s=f64(), adc_overrange=u8(),
        pzt_code_applied=i32(cfg.pzt_mid), spool_code_applied=i32(cfg.spool_mid),
        aom_ftw_applied=i32(0), aom_hz_prev=f64(),
        pzt_x=f64(), pzt_v=f64(), spool_y=f64(), aom_phase_turns=f64(),
        ac_x=np.zeros((N, n_ac)), ac_new=np.zeros((N, n_ac)), ac_g=np.zeros((N, 8)), temp_k=f64(), temp_rate_k_per_tick=f64(),
        pol_angle_rad=f64(), detune_phase_turns=f64(), jump_offset_s=f64(),
        amp_key_db=np.full(N, np.nan), amp_lsb=f64(),
        tick=np.zeros(1, np.int64),
        rng=seed_streams(seed, [(_SALT_NOISE << 20) + i for i in range(N)]),
        rng_common=seed_streams(seed, [_COMMON_STREAM]),
        laser_draw=np.zeros(1),
        hist_pos=np.zeros(1, np.int64),
        ac_seg=np.zeros((Nx, Kx, 2)), seg_hist=np.zeros((Nx, Kx, Hx)),
        act_hist=np.zeros((Nx, Hx)), laser_hist=np.zeros(Hx),
        rt_D=np.zeros((Nx, Kx, MAX_RT_PASSES), np.int64), rt_f=np.zeros((Nx, Kx, MAX_RT_PASSES)),
        rt_w=np.zeros((Nx, Kx, MAX_RT_PASSES)),
        fw_D=np.zeros((Nx, Kx, MAX_FW_PASSES), np.int64), fw_f=np.zeros((Nx, Kx, MAX_FW_PASSES)),
        fw_w=np.zeros((Nx, Kx, MAX_FW_PASSES)),
        act_rt_D=np.zeros(Nx, np.int64), act_rt_f=np.zeros(Nx),
        act_fw_D=np.zeros(Nx, np.int64), act_fw_f=np.zeros(Nx),
    )
    # blades and stationary initial noise, channel by channel
    Lp = np.linalg.cholesky(P_stat + 1e-300 * np.eye(2))
    Llp = np.linalg.cholesky(Pl_stat + 1e-30 * np.max(np.abs(Pl_stat)) * np.eye(n_ac))
    for i in range(N):
        brng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, i, _SALT_BLADE])
        blade = draw_blade(scenario, brng, i)
        _install_blade(cfg, st, i, geoms[i], **blade)
        st.ac_x[i] = Llp @ brng.standard_normal(n_ac)
        for j in range(Kx if segmented else 0):
            st.ac_seg[i, j] = Lp @ brng.standard_normal(2)
    st.temp_rate_k_per_tick[:] = cfg.temp_ramp_k_per_tick
    if segmented:
        _prefill(cfg, st)
    return cfg, st


def _install_blade(cfg, st, ch, geometry, length_m, loss_db, serial,
                   oneway_offset_s):
    p = _link_params(cfg, geometry, float(length_m))
    _apply_link(st, ch, p)
    st.loss_db[ch] = loss_db
    st.blade_serial[ch] = np.uint64(int(serial) & 0xFFFFFFFFFFFFFFFF)
    st.blade_oneway_offset_s[ch] = oneway_offset_s
    st.amp_key_db[ch] = np.nan
    st.present[ch] = 1


def insert_blade(cfg, st, ch, length_m, loss_db, serial, oneway_offset_s):
    """Insert a blade on channel ch (between steps).

    length_m: new link length (m; rack links must keep tau_rt < T/2, long
    links must fit the delay lines); loss_db: connector loss (dB of return
    power); serial: uint64 blade serial; oneway_offset_s: the blade's stored
    one-way offset (s). The fibre noise processes and the actuators (at the
    MCU) carry on; the link's static phase is that of the new length.
    Typical use: insert_blade(cfg, st, ch, **draw_blade(scenario, rng, ch)).
    """
    geometry = {v: k for k, v in C.GEOMETRY_CODES.items()}[int(st.geometry[ch])]
    _install_blade(cfg, st, ch, geometry, length_m, loss_db, serial,
                   oneway_offset_s)


def remove_blade(st, ch):
    """Remove the blade of channel ch: no return light (I/Q = noise only),
    truth NaN. The fibre and actuators carry on."""
    st.present[ch] = 0


_FAULTS = {
    "fade": "fade_db", "detune": "detune_hz", "asymmetry": "asym_s",
    "pzt_stuck": "pzt_stuck", "spool_stuck": "spool_stuck",
    "adc_glitch": "adc_glitch_remaining", "phase_jump": "phase_jump_s",
    "loss": "loss_db", "faraday": "faraday",
}


def apply_fault(st, ch, kind, value):
    """Set one fault hook of channel ch: kind in fade (dB), detune (Hz),
    asymmetry (s, absolute: an asymmetry step sets a new value), pzt_stuck /
    spool_stuck (0/1), adc_glitch (ticks), phase_jump (s, one-off), loss (dB),
    faraday (0/1)."""
    try:
        field = _FAULTS[kind]
    except KeyError:
        raise ValueError(f"unknown fault {kind!r}: valid kinds are "
                         f"{', '.join(sorted(_FAULTS))}") from None
    arr = getattr(st, field)
    arr[ch] = value


def static_oneway_s(st):
    """Absolute static one-way delay of each link to the blade's timing point
    (s): fibre + the blade's stored offset. The truth of rig_step is the
    deviation from this."""
    return st.tau_s + st.blade_oneway_offset_s
