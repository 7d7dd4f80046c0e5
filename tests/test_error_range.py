"""The servo input's range (BankSettings.error_range_s, firmware.channel_fsm.servo_error).

Oracles: Python integers for the shifted, saturated error; the builder's
float arithmetic for the unit scale; a bank with the default range on the
same small errors (the loop is the same physical controller, only the input
LSB differs); the kernel's .py_func.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from firmware import units
from firmware.bank import BankSettings, new_state, tick_batch
from firmware.channel_fsm import servo_error
from firmware.faults import LOCKED

HALF_TURN_S = units.ONEWAY_S_PER_TURN / 2
I64 = st.integers(-(2**62), 2**62)


@settings(max_examples=300)
@given(setpoint=I64, acc=I64, shift=st.integers(0, 24))
def test_servo_error_is_the_floored_shift_saturated(setpoint, acc, shift):
    exact = max(min((setpoint - acc) >> shift, 2**31 - 1), -(2**31))
    assert servo_error(np.int64(setpoint), np.int64(acc), np.int64(shift)) == exact
    assert servo_error.py_func(np.int64(setpoint), np.int64(acc), np.int64(shift)) == exact


@pytest.mark.parametrize("range_s, shift", [(HALF_TURN_S, 0), (1e-15, 0), (2 * HALF_TURN_S, 1),
                                            (2.1 * HALF_TURN_S, 2), (300e-15, 8), (330.8e-15, 8), (331e-15, 9)])
def test_shift_is_the_smallest_that_covers_the_range(range_s, shift):
    cfg = BankSettings(n_channels=2, actuator="aom", error_range_s=max(range_s, HALF_TURN_S)).build()
    assert cfg.err_shift == shift
    assert HALF_TURN_S * 2 ** shift >= max(range_s, HALF_TURN_S) * (1 - 1e-9)


@pytest.mark.parametrize("bad", [0.0, -1e-15, 1e-15, float("nan"), float("inf"), 1.0])
def test_refusals_name_the_field(bad):
    with pytest.raises(ValueError, match="error_range_s"):
        BankSettings(n_channels=2, error_range_s=bad).build()


def test_windows_must_lie_inside_the_range():
    """The input saturates at the range: a loss window beyond it could never be
    crossed (loss of lock never seen), so the builder refuses it."""
    with pytest.raises(ValueError, match="loss_window_s .* outside error_range_s"):
        BankSettings(n_channels=2, loss_window_s=1.3e-15).build()
    with pytest.raises(ValueError, match="lock_window_s .* outside error_range_s"):
        BankSettings(n_channels=2, lock_window_s=2.6e-15, loss_window_s=2.7e-15).build()
    BankSettings(n_channels=2, lock_window_s=2e-15, loss_window_s=5e-15, error_range_s=8e-15).build()


def test_windows_and_gain_follow_the_shift():
    """The same physical settings in both ranges: windows divided by 2**shift,
    the first section's gain multiplied by it (the servo sees the same fs)."""
    a = BankSettings(n_channels=2, actuator="aom").build()
    b = BankSettings(n_channels=2, actuator="aom", error_range_s=300e-15).build()
    assert b.err_shift == 8
    assert abs(int(b.loss_window[0]) - int(a.loss_window[0]) / 256) <= 1
    assert abs(int(b.lad_ch[3, 0]) - int(a.lad_ch[3, 0]) / 256) <= 1            # lock_window
    np.testing.assert_allclose(b.coeffs[0, :3, 0], 256.0 * a.coeffs[0, :3, 0], rtol=1e-6, atol=256)
    np.testing.assert_array_equal(b.coeffs[1:], a.coeffs[1:])


def _run(settings, n_ticks, phase_turn):
    """Both channels fed a constant phase plus, from tick 3000, a slow
    sinusoid (0.05 turn, inside either range): PZT codes per tick."""
    cfg = settings.build()
    st_ = new_state(cfg)
    k = np.arange(n_ticks)[:, None]
    ph = 2 * np.pi * (phase_turn + 0.05 * np.sin(2 * np.pi * k / 4000.0) * (k > 3000))
    i = np.round(16384 * np.cos(ph)).astype(np.int16).repeat(2, axis=1)
    q = np.round(16384 * np.sin(ph)).astype(np.int16).repeat(2, axis=1)
    out = [np.empty((n_ticks, 2), np.int32) for _ in range(3)]
    tick_batch(cfg, st_, i, q, *out)
    return out[0], st_


def test_a_wider_range_is_the_same_loop_at_a_coarser_input():
    """The rack servo with a 4x range (2 bits shifted) drives the PZT as with
    the default range, to a few DAC codes: the same physical controller."""
    base = dict(n_channels=2, calibrate="never")
    fine, st_f = _run(BankSettings(**base), 8000, 0.3)
    wide, st_w = _run(BankSettings(**base, error_range_s=4 * HALF_TURN_S), 8000, 0.3)
    assert st_w.err[0] != 0 and abs(int(st_f.err[0]) - 4 * int(st_w.err[0])) <= 4
    assert np.all(st_f.chan_state == LOCKED) and np.all(st_w.chan_state == LOCKED)
    swing = np.ptp(fine[3000:, 0])
    assert swing > 1000                                     # the loop really moved the PZT
    assert np.abs(wide[3000:, 0].astype(np.int64) - fine[3000:, 0]).max() <= 4
