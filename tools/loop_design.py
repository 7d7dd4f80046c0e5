"""Servo design from the plant model: frequency responses, margins, poles, residual.

The plant of one rack channel, from the DAC code the bank computes at tick k
to the ADC sample it reads (DESIGN sections 3 and 5, sim_hw/rig.py):
  - the code is latched and applied one tick later (zero-order hold over the
    next interval: "the output computed from tick k is applied at tick k+1"),
  - the PZT is a second-order resonance (30 kHz, Q 10) driven by that hold,
  - the front end integrates and dumps the phase over each tick.
The discrete model is exact: the continuous state (x, x', int x) is
discretised with the matrix exponential over one tick, the integral reset at
each dump, and one more tick of latency for the latch.

Design method (docs/loop_design.md): the controller is a cascade of sections
(ZeroIntegrator K (1 + w_z/s)^n, notch, low-pass); its free parameters are
chosen by a seeded global search (scipy differential evolution) that
minimises the predicted out-of-loop residual over 1 Hz-Nyquist for the
scenario's disturbance PSD, subject to: every closed-loop pole inside
|z| < 0.995, sensitivity peak < 6 dB, phase margin >= 45 deg at every unity
crossing, gain margin >= 6 dB. The result is checked again on the quantised
Q2.29 coefficients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import linalg, signal

from firmware.servo_build import (ServoSettings, ZeroIntegratorSettings, NotchSettings,
                                  LowpassSettings, PidSettings)
from firmware.biquad import COEFF_ONE


@dataclass(frozen=True)
class PzPlant:
    """Discrete model of actuator -> measured phase, one-way delay per delay."""
    rate_hz: float = 100e3
    resonance_hz: float = 30e3
    q: float = 10.0
    latch_ticks: int = 1          # ticks between computing a code and applying it
    averaged: bool = True         # integrate-and-dump front end

    def state_space(self):
        T = 1.0 / self.rate_hz
        w0 = 2 * math.pi * self.resonance_hz
        A = np.array([[0, 1, 0], [-w0 ** 2, -w0 / self.q, 0], [1, 0, 0]], float)
        B = np.array([[0], [w0 ** 2], [0]], float)
        M = np.zeros((4, 4))
        M[:3, :3] = A * T
        M[:3, 3:] = B * T
        E = linalg.expm(M)
        Ad, Bd = E[:3, :3].copy(), E[:3, 3:].copy()
        Ad[:, 2] = 0.0                    # the integral restarts at each dump
        C = np.array([[0, 0, 1.0 / T]]) if self.averaged else np.array([[1.0, 0, 0]])
        return Ad, Bd, C

    def tf(self):
        """(num, den) in z, descending powers."""
        Ad, Bd, C = self.state_space()
        num, den = signal.ss2tf(Ad, Bd, C, np.zeros((1, 1)))
        num = np.trim_zeros(num[0], "f")
        den = np.concatenate([den, np.zeros(self.latch_ticks)])
        return num, den

    def response(self, f_hz):
        num, den = self.tf()
        z = np.exp(2j * np.pi * np.asarray(f_hz) / self.rate_hz)
        return np.polyval(num, z) / np.polyval(den, z)


def controller_tf(servo: ServoSettings, quantised=False):
    """(num, den) of the whole cascade in z (dimensionless: unit scale removed)."""
    b_tot, a_tot = np.array([1.0]), np.array([1.0])
    plain = ServoSettings(sections=servo.sections, loop_rate_hz=servo.loop_rate_hz)
    if quantised:
        coeffs, _ = plain.build(len(servo.sections))
        secs = [(c[:3] / COEFF_ONE, np.array([1.0, c[3] / COEFF_ONE, c[4] / COEFF_ONE])) for c in coeffs]
    else:
        secs = plain.float_sections()
    for b, a in secs:
        b_tot = np.polymul(b_tot, b)
        a_tot = np.polymul(a_tot, a)
    return b_tot, a_tot


def _aligned_sum(p1, p2):
    n = max(len(p1), len(p2))
    return np.pad(p1, (n - len(p1), 0)) + np.pad(p2, (n - len(p2), 0))


@dataclass
class LoopReport:
    max_pole: float
    sensitivity_peak_db: float
    phase_margin_deg: float
    gain_margin_db: float
    crossover_hz: float
    residual_as: float

    @property
    def stable(self) -> bool:
        return self.max_pole < 1.0

    def as_dict(self):
        return {k: float(v) for k, v in self.__dict__.items()}


def disturbance_psd(f_hz, rms_s, f_lo=10.0, f_hi=2e3, edge_order=4, band_norm=True):
    """One-way delay PSD (s^2/Hz): f^-2 between f_lo and f_hi, flat below,
    Butterworth edge of `edge_order` above, scaled to rms_s over [f_lo, f_hi]."""
    f = np.asarray(f_hz, float)
    shape = lambda x: 1.0 / ((1 + (x / f_lo) ** 2) * (1 + (x / f_hi) ** (2 * edge_order)))
    ff = np.geomspace(f_lo, f_hi, 20001) if band_norm else np.geomspace(1e-3, 1e6, 40001)
    return rms_s ** 2 * shape(f) / np.trapezoid(shape(ff), ff)


def analyse(servo: ServoSettings, plant: PzPlant, psd_fn, f_lo=1.0, quantised=False,
            n_freq=6000) -> LoopReport:
    """Margins, poles and the predicted residual of servo on plant."""
    rate = plant.rate_hz
    f = np.geomspace(f_lo, rate / 2 * 0.9999, n_freq)
    bc, ac = controller_tf(servo, quantised)
    bp, ap = plant.tf()
    z = np.exp(2j * np.pi * f / rate)
    L = np.polyval(bc, z) / np.polyval(ac, z) * np.polyval(bp, z) / np.polyval(ap, z)
    S = 1.0 / (1.0 + L)
    char = _aligned_sum(np.polymul(ac, ap), np.polymul(bc, bp))
    max_pole = float(np.max(np.abs(np.roots(char))))
    mag = np.abs(L)
    cross = np.nonzero(np.diff(np.sign(mag - 1.0)))[0]
    pms = [180.0 + math.degrees(np.angle(L[i])) for i in cross]
    pms = [((p + 180) % 360) - 180 for p in pms]
    pm = min(pms) if pms else 180.0
    ph = np.unwrap(np.angle(L))
    # gain margin: distance of |L| from 1 where the phase crosses -180 (mod 360),
    # both ways: a conditionally stable loop (|L| >> 1 at a low-frequency
    # -180 crossing) needs margin against a gain DROP as well.
    k = np.nonzero(np.diff(np.floor((ph + np.pi) / (2 * np.pi))))[0]
    gm = min((abs(20 * math.log10(mag[i])) for i in k), default=float("inf"))
    res = math.sqrt(np.trapezoid(np.abs(S) ** 2 * psd_fn(f), f)) / 1e-18
    return LoopReport(max_pole, 20 * math.log10(np.max(np.abs(S))), pm, gm,
                      float(f[cross[-1]]) if len(cross) else 0.0, res)


def rack_servo(params, rate_hz=100e3) -> ServoSettings:
    """The rack controller family: K (1 + w_z/s)^2 (1 + w_3/s) x notch x low-pass."""
    gain, corner_hz, third_hz, notch_hz, notch_q, lp_hz, lp_q = params
    secs = [ZeroIntegratorSettings(gain=gain, corner_hz=corner_hz, order=2)]
    if third_hz > 0:
        secs.append(ZeroIntegratorSettings(gain=1.0, corner_hz=third_hz, order=1))
    secs.append(NotchSettings(f_hz=notch_hz, q=notch_q))
    secs.append(LowpassSettings(f_hz=lp_hz, q=lp_q))
    return ServoSettings(sections=tuple(secs), loop_rate_hz=rate_hz)


def design_rack(plant: PzPlant, psd_fn, third_order=True, seed=1, maxiter=60, popsize=20, x0=None,
                pm_min_deg=45.0):
    """Global search of the rack family; returns (params, LoopReport).

    Constraints: every closed-loop pole inside |z| < 0.995, |S| peak < 6 dB,
    phase margin >= pm_min_deg at every crossing (45: the issue's rule; 30
    leaves DESIGN section 3's sensitivity criterion alone), gain margin >= 6 dB."""
    from scipy.optimize import differential_evolution
    rate = plant.rate_hz
    bounds = [(math.log(0.05), math.log(5.0)),         # gain
              (math.log(300.0), math.log(20e3)),       # corner_hz
              (math.log(100.0), math.log(20e3)),       # third integrator corner
              (math.log(0.5 * plant.resonance_hz), math.log(min(1.5 * plant.resonance_hz, 0.49 * rate))),
              (math.log(0.3), math.log(20.0)),         # notch q
              (math.log(5e3), math.log(0.49 * rate)),  # low-pass
              (math.log(0.3), math.log(2.0))]          # low-pass q

    def params_of(x):
        p = list(np.exp(x))
        if not third_order:
            p[2] = 0.0
        return p

    def cost(x):
        try:
            r = analyse(rack_servo(params_of(x), rate), plant, psd_fn, n_freq=1500)
        except ValueError:
            return 1e9
        pen = 0.0
        pen += 1e4 * max(0.0, r.max_pole - 0.995)
        pen += 50 * max(0.0, r.sensitivity_peak_db - 6.0)
        pen += 5 * max(0.0, pm_min_deg - r.phase_margin_deg)
        pen += 50 * max(0.0, 6.0 - r.gain_margin_db)
        return r.residual_as + (1e3 + pen if pen > 0 else 0.0)

    res = differential_evolution(cost, bounds, seed=seed, maxiter=maxiter, popsize=popsize,
                                 tol=1e-6, polish=True,
                                 x0=None if x0 is None else np.log(np.maximum(x0, 1e-9)))
    p = params_of(res.x)
    return p, analyse(rack_servo(p, rate), plant, psd_fn)


# ============================================================================
# Long links: the AOM (frequency actuator) plant and the longhaul servo
# ============================================================================
# The bank drives the DDS tuning word: its servo output is a one-way delay
# RATE (s/s = delta_f / nu, DESIGN section 5: "AOM/DDS: frequency offset
# actuator, integrates into phase"), so the servo C(s) has units 1/s. From
# the rate computed from sample k to the one-way error the bank reads
# (sim_hw/rig.py, segmented model):
#   - latch: the code is applied over the interval of sample k + 2
#     (computed from k, latched by the next rig call for the one after);
#   - integrator: the AOM phase Phi (one-way seconds) ramps at the rate;
#     the sample is the mean of S internal points of the interval, so the
#     current interval's rate enters with weight h = (S + 1) / (2 S)
#     (h = 1/2 for an exact tick average): T z^-2 (h + (1 - h) z^-1) / (1 - z^-1);
#   - round trip: a near-end correction reaches the detector at once and again
#     after the round trip, c(t) + c(t - 2 tau); the bank reads it as one-way
#     seconds (round trip / 2): x (1 + e^{-s 2 tau}) / 2 = e^{-s tau} cos(w tau).
# So the loop is an integrator with the pure delays tau + 2 T and a comb of
# zeros at (2m + 1) / (4 tau): the loop has no authority there, whatever its
# gain (Williams et al., JOSA B 25, 1284 (2008): bandwidth <= 1/(4 tau)).

@dataclass(frozen=True)
class AomPlant:
    """Frequency actuator on a long link: delay rate (s/s) -> one-way error (s).

    rate_hz: loop rate (Hz), default 10 kHz. tau_s: one-way link delay (s),
    >= 0, default 0 (a lumped link). latch_ticks: ticks between computing a
    code and applying it, default 1 (DESIGN: "applied at tick k+1").
    substeps: 0 = the sample is the exact mean over the tick (lumped rig);
    S >= 1 = the mean of S internal points (the segmented rig,
    Scenario.internal_steps_per_tick). Default 0.
    """
    rate_hz: float = 10e3
    tau_s: float = 0.0
    latch_ticks: int = 1
    substeps: int = 0

    @property
    def weight_now(self) -> float:
        """h: weight of the current interval's rate in the sampled phase."""
        s = int(self.substeps)
        return 0.5 if s <= 0 else (s + 1) / (2.0 * s)

    @property
    def tau_eff_s(self) -> float:
        """tau + 2 ticks: the pure delay of the loop (link plus latency), s."""
        return self.tau_s + (self.latch_ticks + 1) / self.rate_hz

    def actuator_response(self, f_hz):
        """Delay rate (s/s) -> sampled one-way AOM delay (s), near end only."""
        T = 1.0 / self.rate_hz
        h = self.weight_now
        zi = np.exp(-2j * np.pi * np.asarray(f_hz, float) / self.rate_hz)
        return T * zi ** (self.latch_ticks + 1) * (h + (1 - h) * zi) / (1 - zi)

    def round_trip_factor(self, f_hz):
        """(1 + e^{-i 2 pi f 2 tau}) / 2: the near-end correction seen twice."""
        return 0.5 * (1.0 + np.exp(-4j * np.pi * np.asarray(f_hz, float) * self.tau_s))

    def response(self, f_hz):
        """Plant frequency response (s per s/s), exact delay."""
        return self.actuator_response(f_hz) * self.round_trip_factor(f_hz)

    def tf(self):
        """(num, den) in z, descending powers; the round-trip delay 2 tau is
        whole ticks plus a linear fractional delay (as the rig's delay lines
        interpolate). For closed-loop poles; margins use `response`."""
        T = 1.0 / self.rate_hz
        h = self.weight_now
        q = 2.0 * self.tau_s * self.rate_hz
        n = int(math.floor(q))
        fr = q - n
        comb = np.zeros(n + 2)                        # (1 + z^-n ((1 - fr) + fr z^-1)) / 2 in z^-1
        comb[0] += 0.5
        comb[n] += 0.5 * (1.0 - fr)
        comb[n + 1] += 0.5 * fr
        num_w = np.convolve(np.concatenate([np.zeros(self.latch_ticks + 1), [T * h, T * (1 - h)]]), comb)
        num_w = np.trim_zeros(num_w, "b")
        den_w = np.array([1.0, -1.0])
        # N(z^-1) / D(z^-1) = z^(dd - dn) Nz(z) / Dz(z), coefficients unchanged
        dn, dd = len(num_w) - 1, len(den_w) - 1
        return num_w, np.concatenate([den_w, np.zeros(max(0, dn - dd))])


def aom_unit_scale() -> float:
    """Machine output units per machine input unit of a unity C(s) = 1/s
    section on the AOM: phase-code seconds x optical frequency / AOM LSB (Hz)."""
    from firmware import units
    from firmware.bank import aom_unit_hz
    return units.ONEWAY_S_PER_PHASE_CODE * units.OPTICAL_FREQ_HZ / aom_unit_hz()


def controller_response(servo: ServoSettings, f_hz, rate_hz=None, quantised=False):
    """C(e^{i 2 pi f T}) of the cascade in physical units (1/s for the AOM).

    quantised=True builds the Q2.29 coefficients with the AOM unit scale (as
    the bank does: the gains in physical units would overflow Q2.29 at unit
    scale 1) and divides the scale back out of the first section."""
    rate = servo.loop_rate_hz if rate_hz is None else rate_hz
    zi = np.exp(-2j * np.pi * np.asarray(f_hz, float) / rate)
    if quantised:
        scale = aom_unit_scale()
        s = ServoSettings(sections=servo.sections, loop_rate_hz=rate, unit_scale=scale)
        coeffs, _ = s.build(len(servo.sections))
        secs = [(c[:3] / COEFF_ONE / (scale if i == 0 else 1.0),
                 np.array([1.0, c[3] / COEFF_ONE, c[4] / COEFF_ONE])) for i, c in enumerate(coeffs)]
    else:
        secs = ServoSettings(sections=servo.sections, loop_rate_hz=rate).float_sections()
    out = np.ones(np.shape(zi), complex)
    for b, a in secs:
        out *= np.polyval(b[::-1], zi) / np.polyval(a[::-1], zi)
    return out


def loop_gain(servo: ServoSettings, plant: AomPlant, f_hz, quantised=False):
    """L(f) = C(f) P(f) of a long link, exact delays (dimensionless)."""
    return controller_response(servo, f_hz, plant.rate_hz, quantised) * plant.response(f_hz)


def excess_gain(loop, f_hz, tau_s, a):
    """|L| sqrt(a) 2 pi f tau: the loop gain over the suppression the delay
    itself allows. The closed-loop residual is a (2 pi f tau)^2 S_fiber (the
    delay floor) plus the loop's own finite-gain term, whose amplitude
    relative to the floor is ~1 / excess_gain; the Williams formula is the
    limit excess_gain -> infinity (20 dB of excess keeps the finite-gain term
    within +-0.8 dB of the floor, cross term included)."""
    return np.abs(loop) * math.sqrt(a) * 2 * np.pi * np.asarray(f_hz, float) * tau_s


@dataclass
class AomLoopReport:
    """Margins and bands of a long-link loop (AomPlant)."""
    max_pole: float             # largest closed-loop pole |z| (rational model)
    sensitivity_peak_db: float  # max |S| (dB)
    phase_margin_deg: float     # min over every unity crossing
    gain_margin_db: float       # min |20 log |L|| over every -180 deg crossing (both ways)
    crossover_hz: float         # last unity crossing
    gain20_hz: float            # |L| > 20 dB below this (Hz)
    delay_band_hz: float        # excess_gain >= 20 dB below this (Hz), a = 1/4

    @property
    def stable(self) -> bool:
        return self.max_pole < 1.0

    def as_dict(self):
        return {k: float(v) for k, v in self.__dict__.items()}


def _crossing_margins(L):
    """(phase margin deg, gain margin dB, indices of unity crossings) as `analyse`."""
    mag = np.abs(L)
    cross = np.nonzero(np.diff(np.sign(mag - 1.0)))[0]
    pms = [((180.0 + math.degrees(np.angle(L[i])) + 180) % 360) - 180 for i in cross]
    ph = np.unwrap(np.angle(L))
    k = np.nonzero(np.diff(np.floor((ph + np.pi) / (2 * np.pi))))[0]
    gm = min((abs(20 * math.log10(mag[i])) for i in k), default=float("inf"))
    return (min(pms) if pms else 180.0), gm, cross


def analyse_aom(servo: ServoSettings, plant: AomPlant, f_lo=0.2, n_freq=6000,
                quantised=False) -> AomLoopReport:
    """Margins (exact delays), closed-loop poles (rational model) and bands."""
    rate = plant.rate_hz
    f = np.geomspace(f_lo, rate / 2 * 0.9999, n_freq)
    L = loop_gain(servo, plant, f, quantised)
    pm, gm, cross = _crossing_margins(L)
    if quantised:
        scale = aom_unit_scale()
        coeffs, _ = ServoSettings(sections=servo.sections, loop_rate_hz=rate,
                                  unit_scale=scale).build(len(servo.sections))
        bc, ac = np.array([1.0]), np.array([1.0])
        for i, c in enumerate(coeffs):
            bc = np.polymul(bc, c[:3] / COEFF_ONE / (scale if i == 0 else 1.0))
            ac = np.polymul(ac, np.array([1.0, c[3] / COEFF_ONE, c[4] / COEFF_ONE]))
    else:
        bc, ac = controller_tf(servo)
    bp, ap = plant.tf()
    char = _aligned_sum(np.polymul(ac, ap), np.polymul(bc, bp))
    max_pole = float(np.max(np.abs(np.roots(np.trim_zeros(char, "f")))))
    mag = np.abs(L)
    low = np.nonzero(mag <= 10.0)[0]
    gain20 = float(f[low[0]]) if low.size else float(f[-1])
    ex = excess_gain(L, f, plant.tau_s, 0.25)
    bad = np.nonzero(ex < 10.0)[0]
    band = float(f[bad[0]]) if bad.size else float(f[-1])
    return AomLoopReport(max_pole, 20 * math.log10(np.max(np.abs(1.0 / (1.0 + L)))), pm, gm,
                         float(f[cross[-1]]) if len(cross) else 0.0, gain20, band)


def aom_in_loop_rms_s(servo: ServoSettings, plant: AomPlant, psd_fn, f_lo=0.05, n_freq=20000):
    """RMS of a long link's in-loop error (one-way s): sqrt(int |S|^2 S_fiber df)
    from f_lo to Nyquist. psd_fn(f) is the free-running one-way PSD (s^2/Hz).
    The round trip averages the two passes, which only lowers the measured
    noise at high frequency: an upper estimate, within a few % of the bank's
    error on longhaul (0.57 fs measured, 0.59 predicted at 25 km)."""
    f = np.geomspace(f_lo, plant.rate_hz / 2 * 0.9999, n_freq)
    S = 1.0 / (1.0 + loop_gain(servo, plant, f))
    return float(np.sqrt(np.trapezoid(np.abs(S) ** 2 * psd_fn(f), f)))


# The longhaul controller: K (1 + w_z/s)^2 (1 + w_3/s) (1 + s/w_1)/(1 + s/w_2),
# every frequency scaled by 1/tau_eff (tau_eff = tau + 2 ticks, the loop's
# pure delay). The normalised shape came from one seeded search
# (`design_longhaul_template`) over 10, 25, 50 and 100 km at 10 kHz that
# maximises the band where the delay floor dominates (excess gain >= 20 dB),
# subject to PM >= 45 deg at every crossing, GM >= 10 dB both ways, |S| < 6 dB
# and every pole inside |z| < 0.995 (it gave 0.437, 0.101, 0.098, 1.34,
# 16.9), then rounded on a grid to the neighbour with PM >= 46 deg and
# GM >= 10.5 dB at every length from 10 to 100 km; see docs/validation.md.
LONGHAUL_TEMPLATE = dict(
    gain=0.44,        # K tau_eff (K in 1/s: delay rate per second of error)
    corner=0.09,      # w_z tau_eff: the double integrator's zeros
    third=0.09,       # w_3 tau_eff: the third integrator's zero
    lead_zero=1.5,    # w_1 tau_eff: the lead's zero
    lead_pole=16.9,   # w_2 tau_eff: the lead's pole (kept below 0.45 x the loop rate)
)


def longhaul_servo(tau_s, rate_hz=10e3, latch_ticks=1, template=None) -> ServoSettings:
    """The AOM servo of a long link of one-way delay tau_s (s), at rate_hz.

    Sections: K g (1 + w_z/s)^2 (two integrators; the gain and the unit scale
    live here), (1 + w_3/s) (a third: with the AOM's own, a type-4 loop), and
    a first-order lead (1/g) (1 + s/w_1)/(1 + s/w_2), g = w_2/w_1, written as
    a PID section with unity high-frequency gain so its Q2.29 coefficients
    stay small (a unity-DC lead with g ~ 15 would not fit). Frequencies are
    template values / tau_eff, tau_eff = tau_s + (latch_ticks + 1) / rate_hz;
    w_2 is kept below 0.45 rate_hz (short links).
    """
    t = dict(LONGHAUL_TEMPLATE if template is None else template)
    tau = float(tau_s)
    if not (math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau_s must be finite and >= 0, got {tau_s!r}")
    te = tau + (latch_ticks + 1) / rate_hz
    w1 = t["lead_zero"] / te
    w2 = min(t["lead_pole"] / te, 2 * math.pi * 0.45 * rate_hz)
    if not w2 > 2 * w1:
        raise ValueError(f"lead pole {w2:.0f} rad/s must be above twice its zero {w1:.0f} rad/s")
    kp = w1 / w2                                   # lead DC gain 1/g
    kd = kp * (1.0 / w1 - 1.0 / w2)                # kp + kd s/(1 + s/w2) = kp (1 + s/w1)/(1 + s/w2)
    return ServoSettings(
        sections=(ZeroIntegratorSettings(gain=t["gain"] / te / kp,
                                         corner_hz=t["corner"] / te / (2 * math.pi), order=2),
                  ZeroIntegratorSettings(gain=1.0, corner_hz=t["third"] / te / (2 * math.pi), order=1),
                  PidSettings(kp=kp, kd=kd, kd_limit=kd * w2)),
        loop_rate_hz=rate_hz)


def closed_loop_forward_ratio(servo: ServoSettings, plant: AomPlant, geometry: str, f_hz,
                              n_segments=16, quantised=False):
    """Closed-loop forward (out-of-loop) PSD / S_fiber of a segmented link.

    Each segment's noise d_j reaches the round trip through rt_j(f) and the
    blade through fw_j(f) (sim_hw.fibre.pass_delays); the near-end correction
    through 1 + e^{-i w 2 tau} and e^{-i w tau}. With T = L / (1 + L):
        H_j = fw_j - e^{-i w tau} / (1 + e^{-i w 2 tau}) rt_j T
    and each segment carries S_fiber / (K P^2) (P forward passes per segment),
    so the ratio is sum_j |H_j|^2 / (K P^2). It tends to a (2 pi f tau)^2 as
    |L| -> infinity (a = 1/3 distributed, 1/4 folded) and to the free-running
    forward PSD / S_fiber as L -> 0.
    """
    from sim_hw.constants import GEOMETRY_CODES
    from sim_hw.fibre import forward_passes, pass_delays
    g = GEOMETRY_CODES[geometry]
    f = np.asarray(f_hz, float)
    tau = plant.tau_s
    rt_d, rt_w, fw_d, fw_w = pass_delays(g, tau, n_segments)
    w = 2 * np.pi * f[:, None, None]
    rt_j = np.sum(rt_w * np.exp(-1j * w * rt_d), axis=-1)       # [F, K]
    fw_j = np.sum(fw_w * np.exp(-1j * w * fw_d), axis=-1)
    L = loop_gain(servo, plant, f, quantised)
    wc = 2 * np.pi * f
    gain = np.exp(-1j * wc * tau) * 0.5 * (L / (1.0 + L)) / plant.round_trip_factor(f)
    H = fw_j - gain[:, None] * rt_j
    P = forward_passes(g)
    return np.sum(np.abs(H) ** 2, axis=1) / (n_segments * P * P)


def design_longhaul_template(lengths_m=(10e3, 25e3, 50e3, 100e3), rate_hz=10e3, substeps=4,
                             group_delay_s_per_m=4.90e-9, gm_db=10.0, seed=3, maxiter=200,
                             popsize=20):
    """The seeded search behind LONGHAUL_TEMPLATE (minutes of CPU).

    Maximises the mean over lengths of log(delay_band_hz tau_eff) subject to
    PM >= 45 deg, GM >= gm_db (both ways), |S| < 6 dB, poles < 0.995.
    Returns (template dict, {length: AomLoopReport}).
    """
    from scipy.optimize import differential_evolution
    names = ["gain", "corner", "third", "lead_zero", "lead_pole"]
    bounds = [(0.1, 2), (0.01, 1), (0.01, 1), (0.1, 10), (0.5, 100)]
    plants = [AomPlant(rate_hz, L * group_delay_s_per_m, 1, substeps) for L in lengths_m]

    def cost(x):
        t = dict(zip(names, np.exp(x)))
        tot = 0.0
        for p in plants:
            try:
                servo = longhaul_servo(p.tau_s, rate_hz, template=t)
                ServoSettings(sections=servo.sections, loop_rate_hz=rate_hz,
                              unit_scale=aom_unit_scale()).build(len(servo.sections))
                r = analyse_aom(servo, p, n_freq=3000)
            except ValueError:
                return 1e6
            pen = (1e3 * max(0.0, r.max_pole - 0.995) + 5 * max(0.0, 45.0 - r.phase_margin_deg)
                   + 20 * max(0.0, gm_db - r.gain_margin_db) + 20 * max(0.0, r.sensitivity_peak_db - 6.0))
            tot += -math.log(r.delay_band_hz * p.tau_eff_s) + pen
        return tot / len(plants)

    res = differential_evolution(cost, [(math.log(a), math.log(b)) for a, b in bounds], seed=seed,
                                 maxiter=maxiter, popsize=popsize, tol=1e-10, polish=True)
    t = dict(zip(names, (float(v) for v in np.exp(res.x))))
    return t, {L: analyse_aom(longhaul_servo(p.tau_s, rate_hz, template=t), p)
               for L, p in zip(lengths_m, plants)}
