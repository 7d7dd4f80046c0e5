"""firmware.unwrap: wrap arithmetic, streaming unwrapper, slip detector.

Oracles: numpy int32 array arithmetic (which wraps) for the wrapped
difference, the exact integer sum of the true steps and numpy.unwrap for
the unwrapped phase, a numpy re-implementation of the slip rule for flags.
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from numba import njit

from firmware import phase
from firmware.unwrap import (QUARTER_TURN, UnwrapState, is_slip, unwrap_into,
                             unwrap_slips, unwrap_slips_into, unwrap_step,
                             unwrap_stream, unwrap_turns, wrap_diff, wrap_int64)

I32 = st.integers(-2**31, 2**31 - 1)
I64 = st.integers(-2**63, 2**63 - 1)
HALF = 2**31
MAX_TRUE_STEP = 2**31 - 2**21          # true steps under half a turn (float margin for numpy)


def np_wrap_diff(a, b):
    """Independent oracle: int32 array subtraction wraps in numpy."""
    return int((np.array([a], np.int32) - np.array([b], np.int32))[0])


def wrap32(v):
    return ((v + 2**31) % 2**32) - 2**31


def wrap64(v):
    return ((v + 2**63) % 2**64) - 2**63


# ---------------------------------------------------------------- corner tables

WRAP_DIFF = [
    # (a, b, a - b wrapped)
    (0, 0, 0),
    (0x7FFFFFFF, -0x80000000, -1),            # +half edge to -half edge: one code forward
    (-0x80000000, 0x7FFFFFFF, 1),             # crossing the half-turn boundary upward
    (0x7FFFFFFF, 0, 0x7FFFFFFF),
    (-0x80000000, 0, -0x80000000),            # exactly half a turn reads -half
    (0, -0x80000000, -0x80000000),
    (0x40000000, -0x40000000, -0x80000000),   # +quarter - (-quarter) = half
    (-0x40000000, 0x40000000, -0x80000000),
    (0x40000000, 0, 0x40000000),
    (-0x40000000, 0, -0x40000000),
    (0x40000001, -0x40000000, -0x7FFFFFFF),   # just over half: the short way round
    (-0x7FFFFFFF, 0x7FFFFFFF, 2),
    (0x7FFFFFFF, -0x7FFFFFFF, -2),
]


@pytest.mark.parametrize("a, b, want", WRAP_DIFF)
def test_wrap_diff_table(a, b, want):
    assert np_wrap_diff(a, b) == want          # the table itself, against numpy
    assert wrap_diff(a, b) == want
    assert wrap_diff.py_func(a, b) == want


BIG = 2**62
STEP = [
    # (acc, last, phase, new acc)
    (0, 0, 5, 5),
    (0x7FFFFFFF, 0x7FFFFFFF, -0x80000000, 0x80000000),         # +half crossing: turn up
    (-0x80000000, -0x80000000, 0x7FFFFFFF, -0x80000001),       # -half crossing: turn down
    (BIG + 0x7FFFFFFF, 0x7FFFFFFF, -0x7FFFFFFF, BIG + 0x80000001),
    (-BIG - 0x80000000, -0x80000000, 0x7FFFFFF0, -BIG - 0x80000000 - 16),
    (BIG, 0, 0x40000000, BIG + 0x40000000),
    (-BIG, 0, -0x40000000, -BIG - 0x40000000),
    (2**63 - 1, 0, 1, -2**63),                                 # int64 counter wraps
    (-2**63, 0, -1, 2**63 - 1),
    (2**63 - 2**31, 0, 0x7FFFFFFF, 2**63 - 1),
    (5, 0x10, 0x10, 5),
]


@pytest.mark.parametrize("acc, last, ph, want", STEP)
def test_unwrap_step_table(acc, last, ph, want):
    assert wrap64(acc + np_wrap_diff(ph, last)) == want
    assert unwrap_step(acc, last, ph) == want
    assert unwrap_step.py_func(acc, last, ph) == want


@given(I64, I32, I32)
def test_scalar_kernels_equal_py_func(acc, last, ph):
    assert wrap_diff(ph, last) == wrap_diff.py_func(ph, last) == np_wrap_diff(ph, last)
    want = wrap64(acc + np_wrap_diff(ph, last))
    assert unwrap_step(acc, last, ph) == unwrap_step.py_func(acc, last, ph) == want
    for bound in (0, 1000, 2**30, 2**31, 2**40):
        s = int(wrap_diff(ph, last))
        assert bool(is_slip(s, bound)) == bool(is_slip.py_func(s, bound)) \
            == (abs(s) > min(QUARTER_TURN, bound))


@njit(cache=True)
def _jit_wrap_int64(v):
    return wrap_int64(v)


@given(st.integers(-2**70, 2**70))
def test_wrap_int64_jitted_and_python(v):
    assert _jit_wrap_int64(wrap64(v)) == wrap64(v)    # numba: int64 already wrapped
    assert wrap_int64(v) == wrap64(v)                 # Python: explicit mask


# ---------------------------------------------------------------- unwrap against oracles

def walk(start, steps):
    """Phases (int32) of a walk and its true unwrapped phase (Python ints)."""
    true = np.concatenate([[start], start + np.cumsum(np.asarray(steps, np.int64))])
    return (((true + HALF) % 2**32) - HALF).astype(np.int32), true


def numpy_turns(x):
    """Whole turns numpy.unwrap adds to each sample (radians in, exact ints out)."""
    rad = x.astype(float) * (2 * np.pi / 2**32)
    return np.round((np.unwrap(rad) - rad) / (2 * np.pi)).astype(np.int64)


@given(I32, st.lists(st.integers(-MAX_TRUE_STEP, MAX_TRUE_STEP), max_size=300))
def test_unwrap_equals_truth_and_numpy(start, steps):
    x, true = walk(start, steps)
    u = unwrap_turns(x)
    assert u.dtype == np.int64
    assert np.array_equal(u, true)                      # exact codes: the true walk
    assert np.array_equal((u - x.astype(np.int64)) >> 32, numpy_turns(x))
    assert np.array_equal(u & 0xFFFFFFFF, x.astype(np.int64) & 0xFFFFFFFF)


@given(st.integers(0, 2**32 - 1))
def test_unwrap_long_random_walk(seed):
    rng = np.random.default_rng(seed)
    n = 20_000
    steps = rng.integers(-MAX_TRUE_STEP, MAX_TRUE_STEP + 1, n)
    x, true = walk(int(rng.integers(-HALF, HALF)), steps)
    u = unwrap_turns(x)
    assert np.array_equal(u, true)
    assert np.array_equal((u - x) >> 32, numpy_turns(x))


def test_unwrap_far_from_zero_and_half_turn_steps():
    # Starts from the first sample sign-extended; a step of exactly half a
    # turn is read as -half (documented), anything under it is followed.
    x = np.array([-0x80000000, 0x7FFFFFFF, -0x80000000, 0, -0x80000000], np.int32)
    assert list(unwrap_turns(x)) == [-0x80000000, -0x80000001, -0x80000000,
                                     -0x100000000, -0x180000000]
    assert list(unwrap_turns(np.array([0x7FFFFFFF], np.int32))) == [0x7FFFFFFF]
    assert unwrap_turns(np.array([], np.int32)).shape == (0,)
    # 100 turns upward in quarter-turn steps, crossing +half every turn
    x = (np.arange(401, dtype=np.int64) * 0x40000000 + 2**31) % 2**32 - 2**31
    u = unwrap_turns(x.astype(np.int32))
    assert u[-1] - u[0] == 100 * 2**32


@given(I32, st.lists(st.integers(-MAX_TRUE_STEP, MAX_TRUE_STEP), max_size=200),
       st.lists(st.integers(0, 200), max_size=6))
def test_streaming_chunks_equal_one_shot(start, steps, cuts):
    x, _ = walk(start, steps)
    whole = unwrap_turns(x)
    st_ = UnwrapState.new(1)
    edges = sorted(set([0, x.size] + [min(c, x.size) for c in cuts]))
    parts = [unwrap_stream(x[a:b], st_) for a, b in zip(edges[:-1], edges[1:])]
    got = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    assert np.array_equal(got, whole)
    if x.size:
        assert st_.acc[0] == whole[-1] and st_.last[0] == x[-1] and st_.primed[0] == 1


def test_state_continues_far_from_zero():
    # A counter resumed near 2**62 keeps counting whole turns exactly.
    st_ = UnwrapState.new(1)
    st_.acc[0] = 2**62 + 0x7FFFFFF0
    st_.last[0] = 0x7FFFFFF0
    x = np.array([-0x7FFFFFF0, 0, 0x7FFFFFF0, -0x7FFFFFF0], np.int32)
    out = unwrap_stream(x, st_)
    assert list(out - 2**62) == [0x80000010, 2**32, 2**32 + 0x7FFFFFF0, 2**32 + 0x80000010]


def test_bank_columns_equal_single_streams():
    rng = np.random.default_rng(11)
    T, N = 500, 40
    steps = rng.integers(-MAX_TRUE_STEP, MAX_TRUE_STEP + 1, (T, N))
    true = np.cumsum(steps, 0) + rng.integers(-HALF, HALF, N)
    x = (((true + HALF) % 2**32) - HALF).astype(np.int32)
    u = unwrap_turns(x)
    assert u.shape == (T, N)
    for c in range(N):
        assert np.array_equal(u[:, c], unwrap_turns(np.ascontiguousarray(x[:, c])))
    # streaming the bank in two chunks
    st_ = UnwrapState.new(N)
    got = np.concatenate([unwrap_stream(x[:123], st_), unwrap_stream(x[123:], st_)])
    assert np.array_equal(got, u)
    assert phase.unwrap_turns is unwrap_turns


def test_array_kernels_equal_py_func():
    rng = np.random.default_rng(2)
    T, N = 60, 3
    x = rng.integers(-HALF, HALF, (T, N)).astype(np.int32)
    x[5] = -0x80000000
    x[6] = 0x7FFFFFFF
    for kern in ("jit", "py"):
        st_ = UnwrapState.new(N)
        st_.acc[:] = [2**63 - 5, -2**63 + 3, 0]   # counters about to wrap
        out = np.empty((T, N), np.int64)
        with np.errstate(over="ignore"):
            (unwrap_into if kern == "jit" else unwrap_into.py_func)(
                x, out, st_.acc, st_.last, st_.primed)
        if kern == "jit":
            ref_out, ref_st = out, st_
        else:
            assert np.array_equal(out, ref_out)
            assert all(np.array_equal(a, b) for a, b in zip(st_, ref_st))
    bound = np.array([2**29, 2**31, 0], np.int64)
    res = []
    for f in (unwrap_slips_into, unwrap_slips_into.py_func):
        st_ = UnwrapState.new(N)
        st_.acc[:] = [2**63 - 5, -2**63 + 3, 0]
        out = np.empty((T, N), np.int64)
        flags = np.empty((T, N), np.uint8)
        with np.errstate(over="ignore"):
            n = f(x, out, flags, st_.acc, st_.last, st_.primed, st_.slips, bound)
        res.append((int(n), out, flags, st_))
    assert res[0][0] == res[1][0]
    for a, b in zip(res[0][1:3], res[1][1:3]):
        assert np.array_equal(a, b)
    assert all(np.array_equal(a, b) for a, b in zip(res[0][3], res[1][3]))


# ---------------------------------------------------------------- slip detector

SLIP = [
    # (step, max_step_codes, flagged)
    (0, 0, False),
    (QUARTER_TURN, 2**31, False),             # exactly a quarter turn: not a slip
    (QUARTER_TURN + 1, 2**31, True),          # quarter-turn-plus
    (-QUARTER_TURN, 2**31, False),
    (-QUARTER_TURN - 1, 2**31, True),
    (-2**31, 2**31, True),                    # half a turn
    (0x7FFFFFFF, 2**40, True),
    (1000, 1000, False),                      # at the rate bound
    (1001, 1000, True),                       # over it
    (-1001, 1000, True),
    (-1000, 1000, False),
    (QUARTER_TURN, 2**29, True),
    (1, 0, True),
]


@pytest.mark.parametrize("step, bound, want", SLIP)
def test_is_slip_table(step, bound, want):
    assert bool(is_slip(step, bound)) is want
    assert bool(is_slip.py_func(step, bound)) is want


def expected_flags(x, bound, primed_first=False):
    d = np.diff(x.astype(np.int64), prepend=0)
    d = ((d + HALF) % 2**32) - HALF
    f = np.abs(d) > min(QUARTER_TURN, bound)
    if not primed_first:
        f[0] = False
    return f


def test_slip_counts_are_exact():
    # quarter-turn-plus jumps at known samples, small steps elsewhere
    rng = np.random.default_rng(4)
    steps = rng.integers(-1000, 1001, 999)
    at = [10, 11, 500, 998]
    steps[at] = [QUARTER_TURN + 1, -QUARTER_TURN - 7, 2**31 - 1, -(2**31 - 1)]
    x, _ = walk(0x7FFFFF00, steps)
    st_ = UnwrapState.new(1)
    out, flags, n = unwrap_slips(x, st_, 2**31)
    assert n == 4 and st_.slips[0] == 4
    assert list(np.flatnonzero(flags)) == [a + 1 for a in at]
    assert np.array_equal(out, unwrap_turns(x))         # unwrapping unchanged by detection
    # a rate bound of 1000 codes/tick flags nothing more (steps are <= 1000)
    st_ = UnwrapState.new(1)
    _, flags2, n2 = unwrap_slips(x, st_, 1000)
    assert n2 == 4 and np.array_equal(flags2, flags)
    # ... and 999 flags every step of magnitude 1000 as well
    st_ = UnwrapState.new(1)
    _, flags3, n3 = unwrap_slips(x, st_, 999)
    assert n3 == 4 + int(np.sum(np.abs(np.delete(steps, at)) == 1000))


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**31), st.lists(st.integers(0, 300), max_size=4))
def test_slip_flags_match_rule_across_chunks(seed, bound, cuts):
    rng = np.random.default_rng(seed)
    T, N = 300, 3
    steps = rng.integers(-2**31, 2**31, (T, N)) >> rng.integers(0, 32, (T, N))
    x = ((np.cumsum(steps, 0) + HALF) % 2**32 - HALF).astype(np.int32)
    bounds = np.array([bound, 2**31, bound // 7], np.int64)
    st_ = UnwrapState.new(N)
    edges = sorted(set([0, T] + cuts))
    got_f, got_u = [], []
    total = 0
    for a, b in zip(edges[:-1], edges[1:]):
        u, f, n = unwrap_slips(x[a:b], st_, bounds)
        got_f.append(f)
        got_u.append(u)
        total += n
    flags = np.concatenate(got_f)
    want = np.stack([expected_flags(x[:, c], bounds[c]) for c in range(N)], 1)
    assert np.array_equal(flags.astype(bool), want)
    assert total == want.sum()
    assert list(st_.slips) == list(want.sum(0))
    assert np.array_equal(np.concatenate(got_u), unwrap_turns(x))


def test_first_sample_of_fresh_state_is_not_a_slip():
    st_ = UnwrapState.new(1)
    _, f, n = unwrap_slips(np.array([-0x80000000, -0x80000000], np.int32), st_, 0)
    assert n == 0 and not f.any()
    # primed by a plain unwrap_stream call: the next block checks its first sample
    st_ = UnwrapState.new(1)
    unwrap_stream(np.array([0], np.int32), st_)
    _, f, n = unwrap_slips(np.array([QUARTER_TURN + 1], np.int32), st_, 2**31)
    assert n == 1 and f[0] == 1


def test_wrapper_checks():
    st_ = UnwrapState.new(2)
    with pytest.raises(TypeError):
        unwrap_turns(np.zeros(3, np.int64))
    with pytest.raises(ValueError):
        unwrap_stream(np.zeros(3, np.int32), st_)          # 1 stream vs 2-stream state
    with pytest.raises(ValueError):
        unwrap_slips(np.zeros((3, 2), np.int32), st_, -1)
    with pytest.raises(ValueError):
        unwrap_stream(np.zeros((3, 2), np.int32), st_, out=np.zeros((3, 2), np.int32))
