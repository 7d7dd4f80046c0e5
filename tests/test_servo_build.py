"""firmware.servo_build: physical servo settings -> Q2.29 biquad cascades.

Oracles: scipy.signal.bilinear for the Tustin map, the analog transfer
function C(s) evaluated with numpy for the built (quantised) cascade's low
frequency response, the float sections for the coefficient rounding, numpy
root finding for the pole positions, the fixed-point biquad run on the built
coefficients against exact expectations, and a table of refusals (each one
must raise ValueError naming the offending field).
"""
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from scipy import signal

from firmware.biquad import COEFF_ONE, HOLD_COEFFS, biquad_filter, coefficient_budget_ok
from firmware.servo_build import (INT32_MAX, INT32_MIN, LowpassSettings, NotchSettings,
                                  PidSettings, ServoSettings, ZeroIntegratorSettings,
                                  hold_coefficients, quantise, tustin)

RATE = 100e3
NAN, INF = float("nan"), float("inf")


def built(*sections, rate=RATE, stages=4, **kw):
    return ServoSettings(sections=tuple(sections), loop_rate_hz=rate, **kw).build(stages)


def response(coeffs, f_hz, rate):
    """Frequency response of a built int32 cascade [S, 5] at f_hz."""
    z1 = np.exp(-2j * np.pi * np.asarray(f_hz) / rate)
    h = np.ones_like(z1)
    for c in coeffs.astype(float) / COEFF_ONE:
        h = h * (c[0] + c[1] * z1 + c[2] * z1 ** 2) / (1 + c[3] * z1 + c[4] * z1 ** 2)
    return h


# ---------------------------------------------------------------- tustin

@settings(max_examples=60)
@given(frac=st.floats(1e-4, 0.4), q=st.floats(0.3, 20.0), rate=st.floats(1e3, 1e6),
       bn=st.lists(st.floats(-2.0, 2.0), min_size=3, max_size=3))
def test_tustin_equals_scipy_bilinear_biquad(frac, q, rate, bn):
    """Second-order analog sections: coefficient for coefficient."""
    assume(max(abs(v) for v in bn) > 1e-3)
    w = 2 * np.pi * frac * rate
    a_s = np.array([1.0, w / q, w * w])
    b_s = np.array([bn[0], bn[1] * w, bn[2] * w * w])
    bz, az = tustin(b_s, a_s, rate)
    bs, as_ = signal.bilinear(b_s, a_s, fs=rate)
    assert az[0] == 1.0
    np.testing.assert_allclose(az, as_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(bz, bs, rtol=1e-9, atol=1e-12 * max(1.0, np.abs(bs).max()))


@settings(max_examples=40)
@given(b=st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=2), pole=st.floats(0.0, 1e4),
       rate=st.floats(1e3, 1e6))
def test_tustin_equals_scipy_bilinear_first_order(b, pole, rate):
    """First-order analog sections (PI, lag, integrator) map to first-order
    digital ones: equal to scipy's, padded with b2 = a2 = 0. A second-order
    map would add a pole/zero pair at z = -1 that cancels only in float."""
    assume(max(abs(v) for v in b) > 1e-3)
    b_s, a_s = np.array(b), np.array([1.0, pole])
    bz, az = tustin(b_s, a_s, rate)
    bs, as_ = signal.bilinear(b_s, a_s, fs=rate)
    assert bz[2] == 0 and az[2] == 0
    if not (b[1] == 0 and pole == 0):          # no common factor s: coefficient for coefficient
        np.testing.assert_allclose(az, np.pad(as_, (0, 3 - len(as_))), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(bz, np.pad(bs, (0, 3 - len(bs))), rtol=1e-9,
                                   atol=1e-12 * max(1.0, np.abs(bs).max()))
    # always: the same frequency response (a cancelled factor s may be mapped or not)
    f = np.geomspace(1e-3 * rate, 0.49 * rate, 50)
    hz = signal.freqz(bz, az, worN=f, fs=rate)[1]
    hs = signal.freqz(bs, as_, worN=f, fs=rate)[1]
    np.testing.assert_allclose(hz, hs, rtol=1e-8, atol=1e-12 * np.abs(hs).max())


def test_quantise_integrators_exact():
    """-2 and -1 are exact in Q2.29: no leak for double and single integrators."""
    q = quantise([1.0, 0.0, 0.0], [1.0, -2.0, 1.0])
    assert q.dtype == np.int32 and list(q) == [2**29, 0, 0, -2**30, 2**29]
    zi2 = built(ZeroIntegratorSettings(gain=0.3, corner_hz=2e3, order=2))[0][0]
    assert zi2[3] == -2**30 and zi2[4] == 2**29
    dbl = built(PidSettings(kp=0.1, ki=100.0, kii=1e5))[0][0]
    assert dbl[3] == -2**30 and dbl[4] == 2**29


@pytest.mark.parametrize("section", [
    PidSettings(kp=0.5, ki=1000.0),
    PidSettings(ki=200.0),
    ZeroIntegratorSettings(gain=0.5, corner_hz=1e3, order=1),
])
def test_single_integrator_sections_are_first_order(section):
    """A PI / 1/s section builds as a1 = -1, a2 = 0 exactly (the module's own
    sign convention: 'a single integrator a1 = -1, a2 = 0')."""
    c = built(section)[0][0]
    assert c[3] == -2**29 and c[4] == 0 and c[2] == 0


def test_pi_section_at_rest_holds_its_output():
    """After any input, a PI section fed zeros holds a constant output.
    A section built as (1 - z^-2) instead of (1 - z^-1) keeps y[n] = y[n-2]:
    a limit cycle at Nyquist that the loop cannot see (its numerator zero at
    z = -1 hides it from the input)."""
    c, lim = built(PidSettings(kp=0.3, ki=100.0), stages=1)
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.integers(-10**6, 10**6, 10_000), np.zeros(100)]).astype(np.int32)
    y = np.empty_like(x)
    biquad_filter(c[0], np.zeros(4, np.int32), lim[0, 0], lim[0, 1], x, y)
    assert np.all(y[-98:] == y[-1]), y[-6:]


def test_p_only_section_does_not_accumulate_rounding():
    """A P-only section is y = round(kp x): the output must stay within one
    LSB of kp x for any input. Built with a pole at z = 1 (kp s / s, the
    common factor s not cancelled), each sample's rounding error is
    integrated and the output offset random-walks (tens of LSB after 2e4
    samples, without bound over time)."""
    kp = 0.3
    c, lim = built(PidSettings(kp=kp), stages=1)
    rng = np.random.default_rng(1)
    x = rng.integers(-10**6, 10**6, 20_000).astype(np.int32)
    y = np.empty_like(x)
    biquad_filter(c[0], np.zeros(4, np.int32), lim[0, 0], lim[0, 1], x, y)
    assert np.abs(y - kp * x.astype(float)).max() <= 1.0


# ---------------------------------------------------------------- refusals

REFUSALS = [
    # (id, settings factory (called with build), regex the message must match)
    ("kp nan", lambda: built(PidSettings(kp=NAN, ki=1.0)), r"\bkp\b"),
    ("ki inf", lambda: built(PidSettings(kp=1.0, ki=INF)), r"\bki\b"),
    ("kii -inf", lambda: built(PidSettings(kii=-INF)), r"\bkii\b"),
    ("kd nan", lambda: built(PidSettings(kp=1.0, kd=NAN, kd_limit=2.0)), r"\bkd\b"),
    ("zi gain nan", lambda: built(ZeroIntegratorSettings(gain=NAN, corner_hz=1e3)), r"\bgain\b"),
    ("zi gain zero", lambda: built(ZeroIntegratorSettings(gain=0.0, corner_hz=1e3)), r"\bgain\b"),
    ("zi corner inf", lambda: built(ZeroIntegratorSettings(gain=1.0, corner_hz=INF)), r"corner_hz"),
    ("zi order", lambda: built(ZeroIntegratorSettings(gain=1.0, corner_hz=1e3, order=3)), r"order"),
    ("notch f nan", lambda: built(NotchSettings(f_hz=NAN, q=1.0)), r"f_hz"),
    ("notch q inf", lambda: built(NotchSettings(f_hz=1e3, q=INF)), r"notch q"),
    ("notch q zero", lambda: built(NotchSettings(f_hz=1e3, q=0.0)), r"notch q"),
    ("lowpass q nan", lambda: built(LowpassSettings(f_hz=1e3, q=NAN)), r"lowpass q"),
    ("rate nan", lambda: built(PidSettings(kp=1.0), rate=NAN), r"loop_rate_hz"),
    ("rate too high", lambda: built(PidSettings(kp=1.0), rate=20e6), r"loop_rate_hz"),
    ("unit_scale inf", lambda: built(PidSettings(kp=1.0), unit_scale=INF), r"unit_scale"),
    ("unit_scale zero", lambda: built(PidSettings(kp=1.0), unit_scale=0.0), r"unit_scale"),
    ("no sections", lambda: built(), r"section"),
    ("all gains zero", lambda: built(PidSettings()), r"gains zero"),
    # zero-rounded gains
    ("kp rounds to zero", lambda: built(PidSettings(kp=1e-10)), r"section 0.*zero|\bkp\b"),
    ("ki alone rounds to zero", lambda: built(PidSettings(ki=1e-3), rate=10e6), r"section 0.*zero|\bki\b"),
    ("ki lost next to kp", lambda: built(PidSettings(kp=1.0, ki=1e-3), rate=10e6), r"section 0.*zero|\bki\b"),
    ("kii lost next to kp", lambda: built(PidSettings(kp=1.0, kii=1e-2), rate=10e6), r"section 0.*zero|\bkii\b"),
    # sign and structure
    ("mixed kp ki", lambda: built(PidSettings(kp=1.0, ki=-10.0)), r"mixed sign"),
    ("mixed kp kd", lambda: built(PidSettings(kp=-1.0, kd=1e-6, kd_limit=2.0)), r"mixed sign"),
    ("mixed ki kii", lambda: built(PidSettings(ki=10.0, kii=-1e4)), r"mixed sign"),
    ("kii with kd", lambda: built(PidSettings(kii=1e4, kd=1e-6, kd_limit=2.0)), r"kii and kd"),
    ("kd without limit", lambda: built(PidSettings(kp=1.0, kd=1e-6)), r"kd_limit"),
    ("kd_limit below kp", lambda: built(PidSettings(kp=2.0, kd=1e-6, kd_limit=1.0)), r"kd_limit"),
    ("ki_limit below kp", lambda: built(PidSettings(kp=2.0, ki=100.0, ki_limit=1.0)), r"ki_limit"),
    ("ki_limit nan", lambda: built(PidSettings(kp=1.0, ki=100.0, ki_limit=NAN)), r"ki_limit"),
    ("ki_limit zero", lambda: built(PidSettings(ki=100.0, ki_limit=0.0)), r"ki_limit"),
    # ranges
    ("out range inverted", lambda: built(PidSettings(kp=1.0), out_min=5, out_max=-5), r"output range"),
    ("out range empty", lambda: built(PidSettings(kp=1.0), out_min=7, out_max=7), r"output range"),
    ("out range beyond int32", lambda: built(PidSettings(kp=1.0), out_max=2**31), r"output range"),
    ("out range below int32", lambda: built(PidSettings(kp=1.0), out_min=-2**31 - 1), r"output range"),
    # Nyquist
    ("zi corner at nyquist", lambda: built(ZeroIntegratorSettings(gain=0.1, corner_hz=50e3)), r"corner_hz.*Nyquist"),
    ("zi corner above", lambda: built(ZeroIntegratorSettings(gain=0.1, corner_hz=80e3)), r"corner_hz.*Nyquist"),
    ("notch at nyquist", lambda: built(NotchSettings(f_hz=50e3, q=1.0)), r"f_hz.*Nyquist"),
    ("lowpass above", lambda: built(LowpassSettings(f_hz=51e3)), r"f_hz.*Nyquist"),
    ("kd pole above", lambda: built(PidSettings(kp=1.0, kd=1e-6, kd_limit=2.0)), r"kd_limit.*Nyquist"),
    # coefficient range and accumulator budget
    ("huge gain", lambda: built(PidSettings(kp=1e3)), r"section 0.*(range|overflow)"),
    ("huge zi gain", lambda: built(ZeroIntegratorSettings(gain=50.0, corner_hz=1e3)), r"section 0.*(range|overflow)"),
    ("budget", lambda: built(PidSettings(kp=3.9, ki=10.0)), r"section 0.*(8\.0|overflow)"),
    ("budget section 1", lambda: built(NotchSettings(f_hz=10e3, q=1.0), PidSettings(kp=3.9, ki=10.0)),
     r"section 1.*(8\.0|overflow)"),
    ("too many sections", lambda: built(*[LowpassSettings(f_hz=10e3)] * 5), r"5 sections.*at most 4"),
]


@pytest.mark.parametrize("make, pattern", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusals_name_the_field(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_budget_refusal_is_needed():
    """The 'budget' case really is over the accumulator budget (not refused
    for another reason): its float coefficients sum to more than 8."""
    (b, a), = ServoSettings(sections=(PidSettings(kp=3.9, ki=10.0),)).float_sections()
    c = np.concatenate([b, a[1:]])
    assert np.all(np.abs(c) < 4) and np.abs(c).sum() > 8.0


# ---------------------------------------------------------------- valid settings build

@st.composite
def sections(draw):
    kind = draw(st.sampled_from(["zi1", "zi2", "notch", "lowpass", "pi", "pil", "pii", "pd"]))
    sign = draw(st.sampled_from([1.0, -1.0]))
    if kind in ("zi1", "zi2"):
        return ZeroIntegratorSettings(gain=sign * draw(st.floats(0.01, 1.0)),
                                      corner_hz=draw(st.floats(20.0, 2e3)), order=1 if kind == "zi1" else 2)
    if kind == "notch":
        return NotchSettings(f_hz=draw(st.floats(100.0, 45e3)), q=draw(st.floats(0.3, 20.0)))
    if kind == "lowpass":
        return LowpassSettings(f_hz=draw(st.floats(200.0, 45e3)), q=draw(st.floats(0.3, 2.0)))
    kp = draw(st.floats(0.01, 1.0))            # with |a| <= 3, sum |b| stays under 5
    if kind == "pi":
        return PidSettings(kp=sign * kp, ki=sign * draw(st.floats(1.0, 1e4)))
    if kind == "pil":
        return PidSettings(kp=sign * kp, ki=sign * draw(st.floats(1.0, 1e4)),
                           ki_limit=kp * draw(st.floats(1.5, 100.0)))
    if kind == "pii":
        return PidSettings(kp=sign * kp, ki=sign * draw(st.floats(1.0, 1e4)),
                           kii=sign * draw(st.floats(1e3, 1e6)))
    # Derivative pole kd_limit/kd = 1e4..1e5 rad/s, under Nyquist. The section's
    # high-frequency gain is kp + kd_limit: <= 1 keeps |b| inside Q2.29 and the budget.
    kp = kp / 2
    lim = draw(st.floats(max(kp, 0.05), 0.5))
    return PidSettings(kp=sign * kp, ki=sign * draw(st.floats(1.0, 1e4)),
                       kd=sign * lim / draw(st.floats(1e4, 1e5)), kd_limit=lim)


@settings(max_examples=60)
@given(secs=st.lists(sections(), min_size=1, max_size=4),
       rails=st.tuples(st.integers(INT32_MIN, INT32_MAX), st.integers(INT32_MIN, INT32_MAX)))
def test_valid_settings_build_and_match_float_sections(secs, rails):
    """Gains in these ranges are valid at 100 kHz: the build succeeds, every
    coefficient is within 2**-30 (half an LSB) of the float section, unused
    stages are identities, only the last used stage has the output rails,
    the budget holds, and every pole lies inside the unit circle or exactly
    at z = 1 (an integrator): nothing marginal anywhere else."""
    lo, hi = min(rails), max(rails)
    if lo == hi:
        hi = lo + 1 if lo < INT32_MAX else lo
        lo = hi - 1
    s = ServoSettings(sections=tuple(secs), loop_rate_hz=RATE, out_min=lo, out_max=hi)
    coeffs, limits = s.build(4)
    assert coeffs.shape == (4, 5) and limits.shape == (4, 2)
    assert coeffs.dtype == np.int32 and limits.dtype == np.int32
    n = len(secs)
    for i, (b, a) in enumerate(s.float_sections()):
        assert a[0] == 1.0
        want = np.array([b[0], b[1], b[2], a[1], a[2]]) * 2**29
        assert np.abs(coeffs[i] - want).max() <= 0.5 + 1e-6
        assert coefficient_budget_ok(coeffs[i])
        poles = np.roots([1.0, coeffs[i, 3] / 2**29, coeffs[i, 4] / 2**29])
        for p in poles:
            assert abs(p) < 1 - 1e-12 or abs(p - 1) < 1e-3, (secs[i], poles)
    for i in range(n, 4):
        assert list(coeffs[i]) == [2**29, 0, 0, 0, 0]
    for i in range(4):
        want = (lo, hi) if i >= n - 1 else (INT32_MIN, INT32_MAX)
        assert tuple(limits[i]) == want


PIDS = [
    PidSettings(kp=0.5, ki=300.0),
    PidSettings(ki=50.0),
    PidSettings(kp=-0.2, ki=-1e3),
    PidSettings(kp=0.2, ki=100.0, kii=2e4),
    PidSettings(kii=1e5),
    PidSettings(kp=0.3, ki=100.0, ki_limit=30.0),
    PidSettings(kp=0.3, ki=100.0, kd=3e-5, kd_limit=0.5),
    PidSettings(kp=-0.3, kd=-1e-4, kd_limit=0.6),
    PidSettings(kp=0.7),
]


@pytest.mark.parametrize("pid", PIDS, ids=str)
@pytest.mark.parametrize("rate", [100e3, 200e3])
def test_pid_response_matches_analog_at_low_frequency(pid, rate):
    """|H(e^jwT) / C(jw) - 1| < 1 % from 1 Hz to rate/1000 for the built,
    quantised section, with C(s) = kp + ki/(s + wl) + kii/s^2 + kd s/(1 + s kd/kd_limit)."""
    coeffs, _ = built(pid, rate=rate, stages=1)
    f = np.geomspace(1.0, rate / 1000, 25)
    s = 2j * np.pi * f
    wl = abs(pid.ki) / pid.ki_limit if pid.ki_limit else 0.0
    c = pid.kp + pid.ki / (s + wl) + pid.kii / s ** 2
    if pid.kd:
        c = c + pid.kd * s / (1 + s * abs(pid.kd) / pid.kd_limit)
    h = response(coeffs, f, rate)
    assert np.abs(h / c - 1).max() < 0.01


def test_unit_scale_folded_into_first_section_only():
    secs = (ZeroIntegratorSettings(gain=0.3, corner_hz=2e3), LowpassSettings(f_hz=20e3))
    plain = ServoSettings(sections=secs).float_sections()
    scaled = ServoSettings(sections=secs, unit_scale=1e-3).float_sections()
    np.testing.assert_allclose(scaled[0][0], plain[0][0] * 1e-3, rtol=1e-15)
    np.testing.assert_array_equal(scaled[0][1], plain[0][1])
    np.testing.assert_array_equal(scaled[1][0], plain[1][0])


def test_hold_coefficients():
    h = hold_coefficients(3)
    assert h.shape == (3, 5) and h.dtype == np.int32
    assert all(list(r) == list(HOLD_COEFFS) for r in h)
