"""firmware.power: I**2 + Q**2 exact against Python integers."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from numba import njit

from firmware import phase
from firmware.power import return_power, return_power_array, return_power_into

INT64_MAX = 2**63 - 1
I16 = st.integers(-32768, 32767)
I32 = st.integers(-2**31, 2**31 - 1)

TABLE = [
    (0, 0, 0),
    (1, -1, 2),
    (-32768, 0, 2**30),
    (-32768, -32768, 2**31),                    # int16 maximum: needs 32 bits unsigned
    (32767, -32768, 32767**2 + 2**30),
    (32767, 32767, 2 * 32767**2),
    (-2**31, 0, 2**62),
    (2**31 - 1, 2**31 - 1, 2 * (2**31 - 1)**2),
    (-2**31, 2**31 - 1, 2**62 + (2**31 - 1)**2),   # 2**63 - 2**32 + 1, largest exact
    (-2**31, -2**31, INT64_MAX),                # 2**63 saturates (the only such input)
]


@pytest.mark.parametrize("i, q, want", TABLE)
def test_table(i, q, want):
    if (i, q) != (-2**31, -2**31):
        assert i * i + q * q == want
    assert return_power(i, q) == want
    assert return_power(q, i) == want
    assert return_power.py_func(i, q) == want
    assert return_power_array(np.array([i]), np.array([q]))[0] == want


@given(I32, I32)
def test_exact_against_python_ints(i, q):
    want = min(i * i + q * q, INT64_MAX)
    assert return_power(i, q) == want
    assert return_power.py_func(i, q) == want


@given(st.lists(st.tuples(I16, I16), min_size=1, max_size=200))
def test_int16_arrays_exact(pairs):
    i = np.array([p[0] for p in pairs], np.int16)
    q = np.array([p[1] for p in pairs], np.int16)
    got = return_power_array(i, q)
    assert got.dtype == np.int64
    assert [int(v) for v in got] == [a * a + b * b for a, b in pairs]
    assert got.max() <= 2**31                   # int16 budget: 32 bits unsigned


def test_vectorised_surface():
    i = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    got = return_power_array(i, np.int16(-3))
    assert got.shape == (3, 4) and np.array_equal(got, i.astype(np.int64) ** 2 + 9)
    s = return_power_array(3, 4)
    assert isinstance(s, np.int64) and s == 25
    out = np.empty(3, np.int64)
    return_power_into(np.array([1, 2, 3], np.int16), np.array([0, 0, 4], np.int16), out)
    assert list(out) == [1, 4, 25]
    assert phase.return_power is return_power
    assert phase.return_power_array is return_power_array
    with pytest.raises(TypeError):
        return_power_array(np.array([1.0]), np.array([1]))
    with pytest.raises(ValueError):
        return_power_array(np.array([2**31], np.int64), np.array([1]))


@njit(cache=True)
def _tick_like(i, q, out):
    for c in range(out.shape[0]):
        out[c] = return_power(i[c], q[c])


def test_callable_from_jitted_channel_loop():
    rng = np.random.default_rng(1)
    i = rng.integers(-32768, 32768, 40).astype(np.int16)
    q = rng.integers(-32768, 32768, 40).astype(np.int16)
    out = np.empty(40, np.int64)
    _tick_like(i, q, out)
    assert [int(v) for v in out] == [int(a) ** 2 + int(b) ** 2 for a, b in zip(i, q)]
