"""firmware.biquad: direct-form-1 biquad in Q2.29 with int64 accumulator.

Oracles: an exact Python-integer DF1 (`ref_step`: Python ints never wrap, so
any hidden int64 overflow in the kernel shows up as a difference), Fraction
arithmetic for the rounding rule, closed forms for integrators,
scipy.signal.lfilter in float with a derived quantisation bound, float models
with and without anti-windup write-back, and each kernel's `.py_func` run
with numpy overflow turned into an exception.
"""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numba import njit
from scipy import signal

from firmware.biquad import (ACC_BUDGET, COEFF_ONE, COEFF_SHIFT, HOLD_COEFFS, IDENTITY_COEFFS,
                             ROUND_BIAS, biquad_filter, biquad_step, biquad_step_at,
                             cascade_step, coefficient_budget_ok)

I32_MIN, I32_MAX = -2**31, 2**31 - 1
I32 = st.integers(I32_MIN, I32_MAX)
EXTREMES = st.sampled_from([I32_MIN, I32_MIN + 1, -1, 0, 1, I32_MAX - 1, I32_MAX])
I32_EDGY = st.one_of(I32, EXTREMES)
Q = 29                                   # Q2.29, as documented in the module docstring


# ---------------------------------------------------------------- oracles and wrappers

def ref_step(c, h, y_min, y_max, x):
    """Exact DF1 in Python integers: returns (y, new_history, raw accumulator)."""
    c = [int(v) for v in c]
    x1, x2, y1, y2 = (int(v) for v in h)
    acc = 2**(Q - 1) + c[0] * int(x) + c[1] * x1 + c[2] * x2 - c[3] * y1 - c[4] * y2
    y = min(max(acc >> Q, int(y_min)), int(y_max))        # Python >> is floor division
    return y, [int(x), x1, y, y1], acc


def ref_filter(c, h, y_min, y_max, xs):
    h = [int(v) for v in h]
    out = []
    for x in xs:
        y, h, _ = ref_step(c, h, y_min, y_max, x)
        out.append(y)
    return np.array(out, np.int64), h


@njit(cache=True)
def step_jit(c, h, y_min, y_max, x):
    return biquad_step(c, h, y_min, y_max, x)


@njit(cache=True)
def step_at_jit(coeffs, hist, limits, s, c, x):
    return biquad_step_at(coeffs, hist, limits, s, c, x)


def c32(*v):
    return np.array(v, np.int32)


def test_format_constants():
    assert COEFF_SHIFT == Q and COEFF_ONE == 2**Q and ROUND_BIAS == 2**(Q - 1)
    assert ACC_BUDGET == 2**32 - 1
    # a1 = -2 (double integrator) is exactly representable: -2**30 fits int32.
    assert -2 * COEFF_ONE == -2**30 and np.int32(-2**30) == -2 * COEFF_ONE
    assert list(HOLD_COEFFS) == [0, 0, 0, -2**Q, 0]
    assert list(IDENTITY_COEFFS) == [2**Q, 0, 0, 0, 0]


# ---------------------------------------------------------------- corner tables

ROUNDING = [
    # (b0 in LSB, x, y): y = floor(b0 x / 2**29 + 1/2), round half up (toward +inf)
    (2**28, 1, 1),                 # +0.5 -> 1
    (2**28, -1, 0),                # -0.5 -> 0
    (2**28, 3, 2),                 # +1.5 -> 2
    (2**28, -3, -1),               # -1.5 -> -1
    (2**28, 5, 3),                 # +2.5 -> 3 (not banker's 2)
    (2**28, -5, -2),               # -2.5 -> -2
    (2**28 - 1, 1, 0),             # just under +0.5 -> 0
    (2**28 + 1, -1, -1),           # just past -0.5 -> -1
    (2**28, I32_MAX, 2**30),       # 2**30 - 0.5 -> 2**30
    (2**28, I32_MIN, -2**30),      # exact
    (-2**31, 1, -4),               # b0 = -4 exactly
    (2**31 - 1, 1, 4),             # b0 = 4 - 2**-29 -> 4
    (2**31 - 1, -1, -4),           # -4 + 2**-29 -> -4
    (3, 2**27, 1),                 # 3 * 2**27 / 2**29 = 0.75 -> 1
    (-3, 2**27, -1),               # -0.75 -> -1
    (1, 2**28, 1),                 # tiny coefficient, exact half -> 1
]


@pytest.mark.parametrize("b0, x, want", ROUNDING)
def test_rounding_half_up_table(b0, x, want):
    exact = Fraction(b0 * x, 2**Q)
    assert want == (exact + Fraction(1, 2)).__floor__()          # the table itself
    c = c32(b0, 0, 0, 0, 0)
    for fn in (step_jit, biquad_step.py_func):
        h = np.zeros(4, np.int32)
        assert fn(c, h, I32_MIN, I32_MAX, x) == want
        assert list(h) == [x, 0, want, 0]


SATURATION = [
    # (coeffs, history (x1, x2, y1, y2), y_min, y_max, x, want)
    ((-2**31, 0, 0, 0, 0), (0, 0, 0, 0), I32_MIN, I32_MAX, I32_MIN, I32_MAX),     # -4 * -2**31 = 2**33
    ((2**31 - 1, 0, 0, 0, 0), (0, 0, 0, 0), I32_MIN, I32_MAX, I32_MIN, I32_MIN),  # ~ -2**33
    ((2**29, 0, 0, 0, 0), (0, 0, 0, 0), I32_MIN, I32_MAX, I32_MAX, I32_MAX),      # identity, top
    ((2**29, 0, 0, 0, 0), (0, 0, 0, 0), I32_MIN, I32_MAX, I32_MIN, I32_MIN),      # identity, bottom
    ((0, 0, 0, -2**31, 0), (0, 0, I32_MAX, 0), I32_MIN, I32_MAX, 0, I32_MAX),     # y = 4 y1
    ((0, 0, 0, 0, 2**31 - 1), (0, 0, 0, I32_MIN), I32_MIN, I32_MAX, 0, I32_MAX),  # y = -4 y2 > 0
    ((0, 0, 0, 0, -2**31), (0, 0, 0, I32_MIN), I32_MIN, I32_MAX, 0, I32_MIN),     # y = 4 y2 < 0
    ((0, 2**31 - 1, -2**31, 0, 0), (I32_MAX, I32_MIN, 0, 0), I32_MIN, I32_MAX, 0, I32_MAX),
    ((2**29, 0, 0, -2**29, 0), (0, 0, I32_MAX, 0), I32_MIN, I32_MAX, 1, I32_MAX),  # integrator at top + 1
    ((2**29, 0, 0, -2**29, 0), (0, 0, I32_MIN, 0), I32_MIN, I32_MAX, -1, I32_MIN),  # integrator at bottom - 1
    ((2**29, 0, 0, 0, 0), (0, 0, 0, 0), -5, 7, 100, 7),                           # narrow rails
    ((2**29, 0, 0, 0, 0), (0, 0, 0, 0), -5, 7, -100, -5),
    ((2**29, 0, 0, 0, 0), (0, 0, 0, 0), 3, 3, -100, 3),                           # y_min == y_max
    ((2**29, 0, 0, 0, 0), (0, 0, 0, 0), 3, 3, 100, 3),
]


@pytest.mark.parametrize("c, h, y_min, y_max, x, want", SATURATION)
def test_saturation_table(c, h, y_min, y_max, x, want):
    """Extremes saturate at the rails (no wrap), and the clamped value is what
    enters the output history."""
    y_ref, h_ref, _ = ref_step(c, h, y_min, y_max, x)
    assert y_ref == want
    for fn in (step_jit, biquad_step.py_func):
        hist = np.array(h, np.int32)
        with np.errstate(over="raise"):
            assert fn(c32(*c), hist, y_min, y_max, x) == want
        assert list(hist) == h_ref


def test_double_integrator_has_no_leak():
    """a1 = -2, a2 = 1 exactly: over 1e5 samples of a constant input the
    output is the exact parabola A + (n+1) d + c (n+1)(n+2)/2, integer for
    integer, without a single LSB of drift. The initial slope d = -50000
    keeps the whole parabola inside int32 (minimum -1.25e9 at n = 5e4)."""
    n = 100_000
    k = np.arange(1, n + 1, dtype=np.int64)
    c = c32(2**29, 0, 0, -2**30, 2**29)
    y = np.empty(n, np.int32)
    for cin, a, b in ((1, 0, 50_000), (-1, 0, -50_000), (1, 12345, 12345 + 50_000)):
        h = np.array([0, 0, a, b], np.int32)                    # y[-1] = a, y[-2] = b
        biquad_filter(c, h, I32_MIN, I32_MAX, np.full(n, cin, np.int32), y)
        want = a + k * (a - b) + cin * k * (k + 1) // 2
        assert np.abs(want).max() < 2**31
        np.testing.assert_array_equal(y.astype(np.int64), want)
    # The check can fail: one LSB of leak in a1 visibly bends the parabola.
    want = -50_000 * k + k * (k + 1) // 2
    leaky = c32(2**29, 0, 0, -2**30 + 1, 2**29)
    biquad_filter(leaky, np.array([0, 0, 0, 50_000], np.int32), I32_MIN, I32_MAX,
                  np.ones(n, np.int32), y)
    assert np.abs(y.astype(np.int64) - want).max() > 1000


def test_single_integrator_ramp_exact():
    """a1 = -1: y[n] = y[n-1] + g x exactly (g = 0.25 is exact in Q2.29)."""
    c = c32(2**27, 0, 0, -2**29, 0)
    h = np.array([0, 0, -10**9, 0], np.int32)
    x = np.full(50_000, 80_000, np.int32)
    y = np.empty_like(x)
    biquad_filter(c, h, I32_MIN, I32_MAX, x, y)
    np.testing.assert_array_equal(y, -10**9 + 20_000 * np.arange(1, 50_001, dtype=np.int64))


# ---------------------------------------------------------------- against scipy.signal.lfilter

@st.composite
def stable_sections(draw):
    """Float (b, a) with poles inside |z| <= 0.95 (complex pair or two reals)."""
    if draw(st.booleans()):
        r = draw(st.floats(0.0, 0.95))
        th = draw(st.floats(0.0, np.pi))
        a = [1.0, -2 * r * np.cos(th), r * r]
    else:
        p1, p2 = draw(st.floats(-0.95, 0.95)), draw(st.floats(-0.95, 0.95))
        a = [1.0, -(p1 + p2), p1 * p2]
    b = [draw(st.floats(-1.5, 1.5)) for _ in range(3)]
    return np.array(b), np.array(a)


def quantise_q29(v):
    return np.round(np.asarray(v, float) * 2**Q).astype(np.int64)


@settings(max_examples=40)
@given(sec=stable_sections(), seed=st.integers(0, 2**32 - 1),
       kind=st.sampled_from(["noise", "steps", "extremes"]))
def test_matches_lfilter_within_quantisation_bound(sec, seed, kind):
    """Fixed point vs float lfilter with the exact (unrounded) coefficients.

    Error model: y_q[n] = b_q.x - a_q.y_q + r[n], r in (-1/2, 1/2] (output
    rounding), and |b_q - b|, |a_q - a| <= 2**-30 per coefficient. The error
    e = y_q - y_f then obeys e = (1/A(z)) w with
        |w[n]| <= 1/2 + 2**-30 (3 max|x| + 2 max|y_q|),
    so |e| <= ||h_{1/A}||_1 * max|w|: the noise gain is the L1 norm of the
    impulse response of 1/A (poles <= 0.95: 4000 samples are the whole of it).
    The input amplitude keeps max|y| < 2**30 (L1 norm of B/A), so no rail acts.
    """
    b, a = sec
    cq = quantise_q29([b[0], b[1], b[2], a[1], a[2]])
    assert np.abs(cq - np.array([b[0], b[1], b[2], a[1], a[2]]) * 2**Q).max() <= 0.5
    imp = np.zeros(4000)
    imp[0] = 1.0
    l1_noise = np.abs(signal.lfilter([1.0], a, imp)).sum()
    l1_sig = np.abs(signal.lfilter(b, a, imp)).sum()
    amp = int(min(2**24, 2**30 / max(l1_sig, 1e-9)))
    rng = np.random.default_rng(seed)
    n = 400
    if kind == "noise":
        x = rng.integers(-amp, amp + 1, n)
    elif kind == "steps":
        x = np.repeat(rng.integers(-amp, amp + 1, 8), n // 8)
    else:
        x = rng.choice([-amp, 0, amp], n)
    x = x.astype(np.int32)
    y = np.empty(n, np.int32)
    biquad_filter(cq.astype(np.int32), np.zeros(4, np.int32), I32_MIN, I32_MAX, x, y)
    yf = signal.lfilter(b, a, x.astype(float))
    w_max = 0.5 + 2.0**-30 * (3 * np.abs(x).max() + 2 * np.abs(y.astype(float)).max())
    bound = l1_noise * w_max * (1 + 1e-9) + 1e-9 * np.abs(yf).max() + 1e-6
    err = np.abs(y - yf).max()
    assert err <= bound, (err, bound)
    assert np.abs(yf).max() < 2**30                          # no rail was involved


# ---------------------------------------------------------------- rails, windup, hold

@st.composite
def coeff_sets(draw, budget=True):
    """Any int32 coefficients whose |sum| respects the accumulator budget."""
    c = [draw(st.one_of(I32, st.sampled_from([0, 2**29, -2**29, -2**30, -2**31, 2**31 - 1])))
         for _ in range(5)]
    total = sum(abs(v) for v in c)
    if budget and total > ACC_BUDGET:          # scale down in exact integers
        c = [(1 if v >= 0 else -1) * (abs(v) * ACC_BUDGET // total) for v in c]
    return c


@settings(max_examples=60)
@given(c=coeff_sets(), h=st.lists(I32_EDGY, min_size=4, max_size=4),
       rails=st.tuples(I32_EDGY, I32_EDGY), xs=st.lists(I32_EDGY, min_size=1, max_size=30))
def test_output_stays_within_rails_and_matches_exact_integers(c, h, rails, xs):
    y_min, y_max = min(rails), max(rails)
    assert coefficient_budget_ok(c)
    want, h_want = ref_filter(c, h, y_min, y_max, xs)
    x = np.array(xs, np.int32)
    y = np.empty_like(x)
    hist = np.array(h, np.int32)
    biquad_filter(c32(*c), hist, y_min, y_max, x, y)
    assert y.min() >= y_min and y.max() <= y_max
    assert y_min <= hist[2] <= y_max                          # written-back history is clamped too
    np.testing.assert_array_equal(y, want)
    assert list(hist) == h_want


def test_anti_windup_leaves_rail_on_next_sample():
    """Integrator y += x (b0 = 1, a1 = -1) on rails [-1000, 1000].

    100 samples of +100 drive it into the top rail after 10 samples; then the
    error reverses to -1. The fixed point output, whose history holds the
    clamped value, leaves the rail on the very next sample (999). A float
    model that clamps only the output and keeps its integrator state (no
    write-back) winds up to 10000 and stays on the rail for 9000 samples.
    """
    lo, hi = -1000, 1000
    x = np.concatenate([np.full(100, 100), np.full(20_000, -1)]).astype(np.int32)
    c = c32(2**29, 0, 0, -2**29, 0)
    y = np.empty_like(x)
    biquad_filter(c, np.zeros(4, np.int32), lo, hi, x, y)
    assert y[9] == hi and np.all(y[9:100] == hi)
    assert y[100] == hi - 1                                   # off the rail immediately
    np.testing.assert_array_equal(y[100:1100], hi - np.arange(1, 1001))
    # float model WITH write-back (clip, then store): identical trajectory
    s, with_wb = 0.0, []
    for v in x:
        s = min(max(s + v, lo), hi)
        with_wb.append(s)
    np.testing.assert_array_equal(y, np.array(with_wb))
    # float model WITHOUT write-back: winds up
    s, no_wb = 0.0, []
    for v in x:
        s += v
        no_wb.append(min(max(s, lo), hi))
    no_wb = np.array(no_wb)
    stuck = np.argmax(no_wb[100:] < hi)
    assert stuck == 9000                                      # 9000 samples of windup delay
    assert stuck > 1000 * (np.argmax(y[100:] < hi) + 1)


def test_anti_windup_double_integrator():
    """A double integrator on a rail: the velocity written back is zero
    (y1 = y2 = rail), so reversal of the input leaves the rail within a
    sample instead of first unwinding the accumulated velocity."""
    c = c32(2**29, 0, 0, -2**30, 2**29)
    x = np.concatenate([np.full(200, 50), np.full(200, -50)]).astype(np.int32)
    y = np.empty_like(x)
    biquad_filter(c, np.zeros(4, np.int32), -10**5, 10**5, x, y)
    want, _ = ref_filter(c, [0, 0, 0, 0], -10**5, 10**5, x)
    np.testing.assert_array_equal(y, want)
    assert y[199] == 10**5 and y[200] == 10**5 - 50 and y[201] == 10**5 - 150


def test_hold_keeps_output_and_ingests_input():
    """HOLD_COEFFS keep y while x history follows the input; restoring the
    coefficients continues from (current x history, held y)."""
    pi = c32(int(0.75 * 2**29), int(-0.70 * 2**29), 0, -2**29, 0)   # PI: kp 0.75, ki T 0.05
    rng = np.random.default_rng(7)
    x = rng.integers(-10**6, 10**6, 300).astype(np.int32)
    h = np.zeros(4, np.int32)
    y = np.empty(100, np.int32)
    biquad_filter(pi, h, I32_MIN, I32_MAX, x[:100], y)
    held = int(y[-1])
    biquad_filter(HOLD_COEFFS, h, I32_MIN, I32_MAX, x[100:200], y)
    assert np.all(y == held)
    assert list(h) == [x[199], x[198], held, held]           # x history is current
    y2 = np.empty(100, np.int32)
    biquad_filter(pi, h, I32_MIN, I32_MAX, x[200:], y2)
    want, _ = ref_filter(pi, [x[199], x[198], held, held], I32_MIN, I32_MAX, x[200:])
    np.testing.assert_array_equal(y2, want)
    # first sample after release: b0 x[200] + b1 x[199] + held, from the HOLD-time input
    assert y2[0] == (2**28 + int(pi[0]) * int(x[200]) + int(pi[1]) * int(x[199]) + 2**29 * held) >> 29


# ---------------------------------------------------------------- jit == py_func == exact

@settings(max_examples=60)
@given(c=coeff_sets(), h=st.lists(I32_EDGY, min_size=4, max_size=4),
       rails=st.tuples(I32_EDGY, I32_EDGY), x=I32_EDGY)
def test_biquad_step_jit_equals_py_func(c, h, rails, x):
    y_min, y_max = min(rails), max(rails)
    hj, hp = np.array(h, np.int32), np.array(h, np.int32)
    yj = step_jit(c32(*c), hj, y_min, y_max, x)
    with np.errstate(over="raise"):                          # numpy int64 overflow -> exception
        yp = biquad_step.py_func(c32(*c), hp, y_min, y_max, x)
    y_ref, h_ref, _ = ref_step(c, h, y_min, y_max, x)
    assert yj == yp == y_ref
    assert list(hj) == list(hp) == h_ref


@settings(max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), s_n=st.tuples(st.integers(1, 4), st.integers(1, 6)))
def test_biquad_step_at_jit_equals_py_func_and_biquad_step(seed, s_n):
    """Stage-major bank arrays [S, 5|4|2, N]: the in-place kernel equals
    biquad_step on the same stage/channel slice, jitted and as py_func."""
    S, N = s_n
    rng = np.random.default_rng(seed)
    pick = lambda *shape: rng.choice(np.array([I32_MIN, -1, 0, 1, I32_MAX], np.int64), shape)
    coeffs = (rng.integers(I32_MIN, I32_MAX, (S, 5, N), endpoint=True) // 8).astype(np.int32)
    hist = np.where(rng.random((S, 4, N)) < 0.3, pick(S, 4, N),
                    rng.integers(I32_MIN, I32_MAX, (S, 4, N), endpoint=True)).astype(np.int32)
    lim = np.sort(rng.integers(I32_MIN, I32_MAX, (S, 2, N), endpoint=True), axis=1)
    lim[:, :, 0] = (I32_MIN, I32_MAX)
    limits = lim.astype(np.int32)
    xs = np.where(rng.random(S * N) < 0.3, pick(S * N),
                  rng.integers(I32_MIN, I32_MAX, S * N, endpoint=True)).astype(np.int32)
    hj, hp, hr = hist.copy(), hist.copy(), hist.copy()
    k = 0
    for s in range(S):
        for ch in range(N):
            x = int(xs[k])
            k += 1
            yj = step_at_jit(coeffs, hj, limits, s, ch, x)
            with np.errstate(over="raise"):
                yp = biquad_step_at.py_func(coeffs, hp, limits, s, ch, x)
            h1 = hr[s, :, ch].copy()
            y1 = step_jit(coeffs[s, :, ch].copy(), h1, limits[s, 0, ch], limits[s, 1, ch], x)
            hr[s, :, ch] = h1
            y_ref, _, _ = ref_step(coeffs[s, :, ch], hist[s, :, ch], limits[s, 0, ch], limits[s, 1, ch], x)
            assert yj == yp == y1 == y_ref
    np.testing.assert_array_equal(hj, hp)
    np.testing.assert_array_equal(hj, hr)


@settings(max_examples=30)
@given(c=coeff_sets(), h=st.lists(I32_EDGY, min_size=4, max_size=4),
       xs=st.lists(I32_EDGY, min_size=1, max_size=40))
def test_biquad_filter_jit_equals_py_func(c, h, xs):
    x = np.array(xs, np.int32)
    yj, yp = np.empty_like(x), np.empty_like(x)
    hj, hp = np.array(h, np.int32), np.array(h, np.int32)
    biquad_filter(c32(*c), hj, I32_MIN, I32_MAX, x, yj)
    biquad_filter.py_func(c32(*c), hp, I32_MIN, I32_MAX, x, yp)
    np.testing.assert_array_equal(yj, yp)
    np.testing.assert_array_equal(hj, hp)
    np.testing.assert_array_equal(yj, ref_filter(c, h, I32_MIN, I32_MAX, xs)[0])


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), stages=st.integers(1, 4), n=st.integers(1, 30))
def test_cascade_step_jit_equals_py_func_and_chained_oracle(seed, stages, n):
    """Each stage's clamped output feeds the next: exact chain of ref_step."""
    rng = np.random.default_rng(seed)
    coeffs = (rng.integers(I32_MIN, I32_MAX, (stages, 5), endpoint=True) // 8).astype(np.int32)
    coeffs[rng.random(stages) < 0.3] = HOLD_COEFFS
    lim = np.sort(rng.integers(-2**31, 2**31, (stages, 2)), axis=1)
    lim[rng.random(stages) < 0.5] = (I32_MIN, I32_MAX)
    limits = lim.astype(np.int32)
    hj = rng.integers(I32_MIN, I32_MAX, (stages, 4), endpoint=True).astype(np.int32)
    hp, href = hj.copy(), [list(map(int, r)) for r in hj]
    xs = rng.choice(np.array([I32_MIN, I32_MAX, 0]), n) if seed % 3 == 0 else \
        rng.integers(I32_MIN, I32_MAX, n, endpoint=True)
    for x in xs.astype(np.int32):
        yj = cascade_step(coeffs, hj, limits, x)
        yp = cascade_step.py_func(coeffs, hp, limits, x)
        v = int(x)
        for s in range(stages):
            v, href[s], _ = ref_step(coeffs[s], href[s], limits[s, 0], limits[s, 1], v)
        assert yj == yp == v
    np.testing.assert_array_equal(hj, hp)
    np.testing.assert_array_equal(hj, np.array(href))


# ---------------------------------------------------------------- accumulator budget

def test_coefficient_budget_edges():
    assert coefficient_budget_ok([-2**31, -(2**31 - 1), 0, 0, 0])         # sum = 2**32 - 1
    assert not coefficient_budget_ok([-2**31, -2**31, 0, 0, 0])           # one LSB over
    assert coefficient_budget_ok([2**29, 2**29, 2**29, -2**30, 2**29])
    assert not coefficient_budget_ok([2**31 - 1] * 3)


def _extreme_history(c, sign):
    """History that pushes the accumulator to its extreme of the given sign.
    Term i enters as s_i c_i v_i with s = (+, +, +, -, -); |v| = 2**31 only
    for v = -2**31, so that value goes where it adds most."""
    signs = (1, 1, 1, -1, -1)
    v = []
    for ci, si in zip(c, signs):
        want_pos = (sign > 0)
        if (si * ci < 0) == want_pos:
            v.append(I32_MIN)                # s c (-2**31) has the wanted sign, magnitude |c| 2**31
        else:
            v.append(I32_MAX)
    return v[0], [v[1], v[2], v[3], v[4]]


@st.composite
def budget_sets(draw):
    """Five magnitudes <= 2**31 summing to exactly ACC_BUDGET, random signs
    (a magnitude of 2**31 only as -2**31, the one int32 that has it)."""
    mags = [draw(st.integers(0, 2**31)) for _ in range(5)]
    deficit = ACC_BUDGET - sum(mags)
    for i in draw(st.permutations(range(5))):
        add = min(max(deficit, -mags[i]), 2**31 - mags[i])
        mags[i] += add
        deficit -= add
    assert deficit == 0
    return [-m if (m == 2**31 or draw(st.booleans())) else m for m in mags]


@settings(max_examples=60)
@given(c=budget_sets(), sign=st.sampled_from([1, -1]))
def test_accumulator_cannot_overflow_at_budget(c, sign):
    """At the budget, with the worst int32 history, the exact accumulator
    stays inside int64 and the kernel (jit and py_func with overflow
    trapping) agrees with exact integers."""
    assert sum(abs(v) for v in c) == ACC_BUDGET and coefficient_budget_ok(c)
    x, h = _extreme_history(c, sign)
    y_ref, h_ref, acc = ref_step(c, h, I32_MIN, I32_MAX, x)
    assert -2**63 <= acc < 2**63
    assert abs(acc) >= ACC_BUDGET * (2**31 - 1) - 2**28       # really the extreme case
    hj, hp = np.array(h, np.int32), np.array(h, np.int32)
    with np.errstate(over="raise"):
        assert biquad_step.py_func(c32(*c), hp, I32_MIN, I32_MAX, x) == y_ref
    assert step_jit(c32(*c), hj, I32_MIN, I32_MAX, x) == y_ref


def test_budget_is_tight_one_lsb_over_overflows():
    """One LSB over the budget the same worst case needs 2**63 + 2**28: the
    jitted int64 accumulator wraps and the result is wrong, which is why the
    builder must refuse such sets."""
    c = [-2**31, -2**31, 0, 0, 0]
    x, h = _extreme_history(c, 1)
    y_ref, _, acc = ref_step(c, h, I32_MIN, I32_MAX, x)
    assert acc >= 2**63 and y_ref == I32_MAX
    assert step_jit(c32(*c), np.array(h, np.int32), I32_MIN, I32_MAX, x) != y_ref
