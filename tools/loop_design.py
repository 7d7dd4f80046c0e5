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
                                  LowpassSettings, LeadLagSettings)
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


def rack_servo4(params, rate_hz=100e3, variant="lp") -> ServoSettings:
    """Four-section rack family: K (1 + w_z/s)^2, (1 + w_3/s), lead/lag, and a
    low-pass (variant "lp") or a notch (variant "notch") as the fourth."""
    gain, corner_hz, third_hz, f4, q4, lz, lqz, lp, lqp = params
    last = LowpassSettings(f_hz=f4, q=q4) if variant == "lp" else NotchSettings(f_hz=f4, q=q4)
    return ServoSettings(sections=(ZeroIntegratorSettings(gain=gain, corner_hz=corner_hz, order=2),
                                   ZeroIntegratorSettings(gain=1.0, corner_hz=third_hz, order=1),
                                   LeadLagSettings(lz, lqz, lp, lqp), last),
                         loop_rate_hz=rate_hz)


def design_rack(plant: PzPlant, psd_fn, third_order=True, seed=1, maxiter=60, popsize=20, x0=None):
    """Global search of the rack family; returns (params, LoopReport)."""
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
        pen += 5 * max(0.0, 45.0 - r.phase_margin_deg)
        pen += 50 * max(0.0, 6.0 - r.gain_margin_db)
        return r.residual_as + (1e3 + pen if pen > 0 else 0.0)

    res = differential_evolution(cost, bounds, seed=seed, maxiter=maxiter, popsize=popsize,
                                 tol=1e-6, polish=True,
                                 x0=None if x0 is None else np.log(np.maximum(x0, 1e-9)))
    p = params_of(res.x)
    return p, analyse(rack_servo(p, rate), plant, psd_fn)
