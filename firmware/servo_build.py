"""Servo settings in physical units -> Q2.29 biquad cascades in machine units.

The controller C(s) maps the one-way delay error (s) to the actuator command:
for a position actuator (PZT) C is dimensionless (seconds of delay commanded
per second of error); for a frequency actuator (AOM) C has units Hz of optical
frequency per second of error... expressed as 1/s of delay rate per second of
error (dtau/dt = delta_f / nu). Each analog section is discretised with the
bilinear (Tustin) map, so 1/s becomes T/2 (1 + z^-1)/(1 - z^-1) and integrators
keep a1 = -1 (or -2 for 1/s^2) exactly.

Machine units: the input is the round-trip phase error in int32 codes
(2**32 = one turn = 2.585 fs of one-way delay); the output is in the
actuator's 32-bit units (PZT: 4 ps / 2**32 per LSB, full int32 = full range).
The unit conversion is folded into the first section's b coefficients.

Refusals (ValueError, with the offending field named): non-finite values,
a nonzero gain that rounds to a zero coefficient, gains of mixed sign (a
controller with zeros in the right half plane is almost always a typo),
inverted or empty ranges, limits below the gain they limit, corner
frequencies at or beyond Nyquist, and coefficient sets whose int64
accumulator could overflow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from firmware.biquad import COEFF_ONE, COEFF_SHIFT, ACC_BUDGET, HOLD_COEFFS

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


def _finite(name, value):
    if value is None or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _positive(name, value):
    v = _finite(name, value)
    if v <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return v


def _below_nyquist(name, f_hz, rate_hz):
    f = _positive(name, f_hz)
    if f >= rate_hz / 2:
        raise ValueError(f"{name} = {f_hz} Hz must be below Nyquist ({rate_hz / 2} Hz)")
    return f


def tustin(b_s, a_s, rate_hz):
    """Bilinear map of an analog section b(s)/a(s) (highest power first, order <= 2).

    Returns (b[3], a[3]) normalised so a[0] = 1. A first-order section maps
    to a first-order one (b2 = a2 = 0): mapping it as second order would add
    a pole and a zero at z = -1 that cancel in float but not after rounding,
    leaving a marginally stable mode at Nyquist.
    """
    b_s = np.trim_zeros(np.asarray(b_s, float), "f")
    a_s = np.trim_zeros(np.asarray(a_s, float), "f")
    if len(a_s) == 0 or len(b_s) == 0:
        raise ValueError("analog section with a zero numerator or denominator")
    # A common factor s (e.g. kp s / s) would map to a pole and a zero at z = 1:
    # the pole would integrate rounding error. Cancel it first.
    while len(b_s) > 1 and len(a_s) > 1 and b_s[-1] == 0 and a_s[-1] == 0:
        b_s, a_s = b_s[:-1], a_s[:-1]
    order = max(len(b_s), len(a_s)) - 1
    if order > 2:
        raise ValueError(f"analog section of order {order} (at most 2)")
    b_s = np.pad(b_s, (order + 1 - len(b_s), 0))
    a_s = np.pad(a_s, (order + 1 - len(a_s), 0))
    k = 2.0 * rate_hz
    if order == 0:
        return np.array([b_s[0] / a_s[0], 0.0, 0.0]), np.array([1.0, 0.0, 0.0])
    if order == 2:
        # s = k (1 - z^-1)/(1 + z^-1); multiply through by (1 + z^-1)^2.
        basis = np.array([[1.0, -2.0, 1.0],   # s^2 -> k^2 (1 - z^-1)^2
                          [1.0, 0.0, -1.0],   # s   -> k (1 - z^-1)(1 + z^-1)
                          [1.0, 2.0, 1.0]])   # 1   -> (1 + z^-1)^2
        scale = np.array([k * k, k, 1.0])
    else:
        basis = np.array([[1.0, -1.0, 0.0],   # s -> k (1 - z^-1)
                          [1.0, 1.0, 0.0]])   # 1 -> (1 + z^-1)
        scale = np.array([k, 1.0])
    bz = (b_s * scale) @ basis
    az = (a_s * scale) @ basis
    return bz / az[0], az / az[0]


def quantise(b, a, name="section"):
    """Float biquad (b0, b1, b2), (1, a1, a2) -> int32[5] Q2.29, with checks."""
    c = np.array([b[0], b[1], b[2], a[1], a[2]], dtype=float)
    if not np.all(np.isfinite(c)):
        raise ValueError(f"{name}: non-finite coefficient {c}")
    if np.any(np.abs(c) >= 4.0):
        raise ValueError(f"{name}: coefficient outside Q2.29 range [-4, 4): {c}")
    q = np.round(c * COEFF_ONE).astype(np.int64)
    zero_rounded = (c != 0) & (q == 0)
    if (np.any(zero_rounded[:3]) or (np.any(c[:3] != 0) and not np.any(q[:3]))
            or (c[:3].sum() != 0 and q[:3].sum() == 0)):
        raise ValueError(f"{name}: a nonzero gain rounds to a zero coefficient at Q2.{COEFF_SHIFT} "
                         f"(b = {c[:3]}); raise the gain or lower the loop rate")
    if int(np.abs(q).sum()) > ACC_BUDGET:
        raise ValueError(f"{name}: sum of |coefficients| {np.abs(c).sum():.3f} exceeds 8.0: "
                         "the int64 accumulator could overflow")
    return q.astype(np.int32)


@dataclass(frozen=True)
class PidSettings:
    """One PID-type section in physical units.

    kp:  proportional gain, fs of command per fs of error (dimensionless). Default 0.
    ki:  integral gain, 1/s (C = ki/s). Default 0.
    kii: double-integral gain, 1/s^2 (C = kii/s^2). Default 0. Not with kd.
    kd:  derivative gain, s (C = kd s). Default 0. Needs kd_limit.
    ki_limit: optional low-frequency gain limit (dimensionless) of the integral
        path: 1/s becomes 1/(s + ki/ki_limit). Must be >= |kp|.
    kd_limit: high-frequency gain limit of the derivative (dimensionless): the
        derivative pole sits at kd_limit/kd rad/s, which must be below Nyquist.
    All gains share one sign.
    """
    kp: float = 0.0
    ki: float = 0.0
    kii: float = 0.0
    kd: float = 0.0
    ki_limit: float | None = None
    kd_limit: float | None = None

    def analog(self, rate_hz):
        kp, ki, kii, kd = (_finite(n, getattr(self, n)) for n in ("kp", "ki", "kii", "kd"))
        gains = [g for g in (kp, ki, kii, kd) if g != 0]
        if not gains:
            raise ValueError("PID section has all gains zero")
        if any(g > 0 for g in gains) and any(g < 0 for g in gains):
            raise ValueError(f"PID gains of mixed sign (kp={kp}, ki={ki}, kii={kii}, kd={kd})")
        if kii and kd:
            raise ValueError("kii and kd in one section need three poles: split them into two sections")
        wl = 0.0                                   # integrator leak, rad/s
        if self.ki_limit is not None:
            lim = _positive("ki_limit", abs(self.ki_limit))
            if lim < abs(kp):
                raise ValueError(f"ki_limit {lim} is below |kp| = {abs(kp)}: inverted range")
            if ki:
                wl = abs(ki) / lim
            elif kii:
                wl = math.sqrt(abs(kii) / lim)
        if kd:
            if self.kd_limit is None:
                raise ValueError("kd needs kd_limit (the high-frequency gain limit)")
            lim = _positive("kd_limit", abs(self.kd_limit))
            if lim < abs(kp):
                raise ValueError(f"kd_limit {lim} is below |kp| = {abs(kp)}: inverted range")
            wd = lim / abs(kd)
            _below_nyquist("kd_limit/kd/(2 pi)", wd / (2 * math.pi), rate_hz)
            # kp + ki/(s + wl) + kd s/(1 + s/wd)
            b = np.polyadd(np.polyadd(np.polymul([kp], np.polymul([1, wl], [1 / wd, 1])),
                                      np.polymul([ki], [1 / wd, 1])),
                           np.polymul([kd, 0], [1, wl]))
            a = np.polymul([1, wl], [1 / wd, 1])
            return b / a[0], a / a[0]
        if kii:
            # kp + ki/(s + wl) + kii/(s + wl)^2  ->  over (s + wl)^2
            b = np.polyadd(np.polyadd(np.polymul([kp], [1, 2 * wl, wl * wl]),
                                      np.polymul([ki], [1, wl])), [kii])
            return b, np.array([1.0, 2 * wl, wl * wl])
        return np.array([kp, kp * wl + ki]), np.array([1.0, wl])


@dataclass(frozen=True)
class ZeroIntegratorSettings:
    """K (1 + w_z/s)^n as one section, n in {1, 2}: n integrators, n zeros at corner_hz.

    gain: high-frequency gain K (dimensionless for a position actuator).
    corner_hz: the zeros, Hz, below Nyquist. order: 1 or 2.
    """
    gain: float
    corner_hz: float
    order: int = 2

    def analog(self, rate_hz):
        k = _finite("gain", self.gain)
        if k == 0:
            raise ValueError("gain must be nonzero")
        wz = 2 * math.pi * _below_nyquist("corner_hz", self.corner_hz, rate_hz)
        if self.order == 1:
            return np.array([k, k * wz]), np.array([1.0, 0.0])
        if self.order == 2:
            return k * np.array([1.0, 2 * wz, wz * wz]), np.array([1.0, 0.0, 0.0])
        raise ValueError(f"order must be 1 or 2, got {self.order}")


@dataclass(frozen=True)
class NotchSettings:
    """Notch at f_hz with quality factor q (> 0), unity gain away from f_hz."""
    f_hz: float
    q: float

    def analog(self, rate_hz):
        w = 2 * math.pi * _below_nyquist("notch f_hz", self.f_hz, rate_hz)
        q = _positive("notch q", self.q)
        return np.array([1.0, 0.0, w * w]), np.array([1.0, w / q, w * w])


@dataclass(frozen=True)
class LowpassSettings:
    """Second-order low-pass, corner f_hz, quality factor q (0.707 = Butterworth)."""
    f_hz: float
    q: float = 0.7071

    def analog(self, rate_hz):
        w = 2 * math.pi * _below_nyquist("lowpass f_hz", self.f_hz, rate_hz)
        q = _positive("lowpass q", self.q)
        return np.array([w * w]), np.array([1.0, w / q, w * w])


@dataclass(frozen=True)
class ServoSettings:
    """A channel's servo: sections applied in order, then the actuator.

    loop_rate_hz: tick rate, Hz, (0, 10 MHz]. Default 100 kHz.
    sections: PidSettings / ZeroIntegratorSettings / NotchSettings / LowpassSettings,
        at most MAX_STAGES. The first carries the loop gain.
    unit_scale: machine output units per machine input unit of a unity-gain
        section (set by the actuator: phase code seconds / actuator LSB seconds).
    out_min, out_max: output rails in actuator units (int32, min < max).
    """
    sections: tuple = field(default_factory=tuple)
    loop_rate_hz: float = 100e3
    unit_scale: float = 1.0
    out_min: int = INT32_MIN
    out_max: int = INT32_MAX

    def float_sections(self):
        """The discretised sections as float (b, a) pairs, unit scale folded in."""
        rate = _positive("loop_rate_hz", self.loop_rate_hz)
        if rate > 10e6:
            raise ValueError(f"loop_rate_hz {rate} above 10 MHz")
        if not self.sections:
            raise ValueError("a servo needs at least one section")
        scale = _positive("unit_scale", self.unit_scale)
        out = []
        half_lsb = 0.5 / COEFF_ONE
        for i, sec in enumerate(self.sections):
            if isinstance(sec, PidSettings):
                # each gain's own share of a coefficient must survive rounding,
                # or that term silently vanishes next to the others
                T = 1.0 / rate
                share = {"kp": abs(sec.kp), "ki": abs(sec.ki) * T / 2, "kii": abs(sec.kii) * T * T / 4}
                for name, v in share.items():
                    if v and v * (scale if i == 0 else 1.0) < half_lsb:
                        raise ValueError(f"section {i}: {name} = {getattr(sec, name)} contributes less than "
                                         f"half an LSB of Q2.{COEFF_SHIFT} at {rate} Hz: it would be lost")
            b, a = tustin(*sec.analog(rate), rate)
            if i == 0:
                b = b * scale
            out.append((b, a))
        return out

    def build(self, max_stages):
        """-> (coeffs int32[max_stages, 5], limits int32[max_stages, 2]).

        Unused stages are identities; intermediate stages rail at the int32
        range, the last used stage at [out_min, out_max].
        """
        lo, hi = int(self.out_min), int(self.out_max)
        if not (INT32_MIN <= lo < hi <= INT32_MAX):
            raise ValueError(f"output range [{self.out_min}, {self.out_max}] is inverted, empty or outside int32")
        secs = self.float_sections()
        if len(secs) > max_stages:
            raise ValueError(f"{len(secs)} sections, at most {max_stages}")
        coeffs = np.zeros((max_stages, 5), np.int32)
        coeffs[:, 0] = COEFF_ONE
        limits = np.empty((max_stages, 2), np.int32)
        limits[:, 0], limits[:, 1] = INT32_MIN, INT32_MAX
        for i, (b, a) in enumerate(secs):
            coeffs[i] = quantise(b, a, name=f"section {i} ({type(self.sections[i]).__name__})")
        limits[len(secs) - 1:] = (lo, hi)
        return coeffs, limits


def hold_coefficients(max_stages):
    """Coefficients that keep every stage's output while ingesting input."""
    return np.tile(HOLD_COEFFS, (max_stages, 1))
