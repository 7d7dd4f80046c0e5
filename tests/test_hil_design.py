"""The link-rate servo design of tools/hil.py: the fractional-delay plant, the design's
margins and closed-loop stability, the frame-step figure against the rig."""
import math

import numpy as np
import pytest
from scipy import signal

from firmware.bank import Bank
from sim_hw.rig import build_rig, rig_run
from sim_hw.scenarios import get_scenario
from tools.hil import (LinkPlant, _servo, bank_settings_for_link, design_servo, frame_step_rms_s,
                       inloop_step_rms_s)
from tools.loop_design import PzPlant, controller_tf
from firmware.units import ONEWAY_S_PER_TURN

RACK = get_scenario("rack10")


@pytest.mark.parametrize("delay", [0.0, 0.3, 1.0, 1.75, 3.5])
def test_fractional_delay_plant_is_a_delayed_hold_read_by_integrate_and_dump(delay):
    # With the PZT resonance far above the loop, the plant is a pure delay tau of a
    # zero-order hold seen by an integrate-and-dump front end: the sample n averages
    # u over [nT, (n+1)T) with u_k applied from (k+1)T + tau, i.e.
    # y_n = (1 - phi) u_{n-1-m} + phi u_{n-2-m}, tau = (m + phi) T.
    plant = LinkPlant(1000.0, delay, resonance_hz=1e9, q=0.5)
    num, den = plant.tf()
    _, (h,) = signal.dimpulse((num, den, 1e-3), n=12)
    m, phi = int(math.floor(delay)), delay - math.floor(delay)
    want = np.zeros(12)
    want[1 + m] += 1 - phi
    if 2 + m < 12:
        want[2 + m] += phi
    assert np.allclose(h[:, 0], want, atol=1e-6)


def test_integer_delays_match_the_lock_step_plant():
    for m in (0, 1, 2):
        f = np.geomspace(1, 499, 50)
        a = LinkPlant(1000.0, float(m)).response(f)
        b = PzPlant(rate_hz=1000.0, latch_ticks=m).response(f)
        assert np.allclose(a, b, rtol=1e-9)


@pytest.mark.parametrize("rate,delay", [(200.0, 1.2), (1000.0, 0.7), (2500.0, 2.0), (10_000.0, 3.0)])
def test_designs_meet_the_margins_and_are_stable(rate, delay):
    servo, rep = design_servo(rate, delay, RACK)
    assert rep.phase_margin_deg >= 45 and rep.gain_margin_db >= 6 and rep.sensitivity_peak_db < 6
    # closed loop simulated with scipy: a step of disturbance is rejected, bounded
    bc, ac = controller_tf(servo, quantised=True)
    bp, ap = LinkPlant(rate, delay).tf()
    L_num, L_den = np.polymul(bc, bp), np.polymul(ac, ap)
    n = max(len(L_num), len(L_den))
    S_num = np.pad(L_den, (n - len(L_den), 0))
    S_den = S_num + np.pad(L_num, (n - len(L_num), 0))
    assert np.abs(np.roots(S_den)).max() < 1.0
    _, (e,) = signal.dstep((S_num, S_den, 1 / rate), n=int(20 * rate / max(rep.crossover_hz, 1)))
    assert abs(e[-1, 0]) < 0.05 and np.abs(e).max() < 3.0
    # the worse the link's rate, the worse the predicted residual
    assert rep.residual_as > 100


def test_residual_prediction_falls_with_the_rate():
    res = [design_servo(r, d, RACK)[1].residual_as for r, d in ((200.0, 1.2), (1000.0, 0.7),
                                                                (10_000.0, 3.0))]
    assert res[0] > res[1] > res[2]


def test_frame_step_against_the_rig():
    rate = 1000.0
    cfg, st = build_rig(RACK, 6, 3, loop_rate_hz=rate)
    mid = np.full(6, 1 << 19)
    _, _, tr = rig_run(cfg, st, mid, np.full(6, 1 << 15), np.zeros(6), 30_000)
    got = np.diff(tr, axis=0).std(axis=0)
    want = np.array([frame_step_rms_s(RACK, rate, L) for L in st.length_m])
    assert np.allclose(got, want, rtol=0.1), (got / want)


def test_inloop_step_is_the_free_step_through_the_sensitivity():
    # a loop of negligible gain leaves the fibre's own frame step; the designed
    # loop at 2 kHz with a 1.8-frame delay amplifies it (its sensitivity peak sits
    # inside rack10's acoustic band), which is what makes a 1 Mbaud link slip
    rate = 2000.0
    plant = LinkPlant(rate, 1.8, RACK.pzt_resonance_hz, RACK.pzt_q)
    weak = inloop_step_rms_s(_servo((1e-6, 1.0, 1, None), rate), plant, RACK)
    assert weak == pytest.approx(frame_step_rms_s(RACK, rate), rel=2e-3)
    servo, _ = design_servo(rate, 1.8, RACK)
    assert inloop_step_rms_s(servo, plant, RACK) > 1.1 * frame_step_rms_s(RACK, rate)


@pytest.mark.parametrize("rate", [200.0, 2500.0, 10_000.0])
def test_bank_builds_at_link_rates(rate):
    s, rep = bank_settings_for_link(RACK, 4, rate, 1.5)
    bank = Bank(s)
    assert bank.settings.loop_rate_hz == rate
    assert s.lock_window_s < 1.29e-15
    # the AOM live on the rig's own DDS clock (1 GHz / 2**32 per code), no scaled
    # clock; its model's f_clk T in Q16 as the bank builds it; the AOM latency from
    # the loop delay; calibration off (docs/hil.md section 3)
    assert s.aom_clock_hz == pytest.approx(RACK.aom_hz_per_ftw * 2 ** 32, rel=1e-12)
    assert bank.config.aom_kq16 == round(s.aom_clock_hz / rate * 65536)
    assert s.aom_latency_ticks == 3 and s.calibrate == "never"
    # the loss window 8 sigma above the design's error, inside the servo input's range
    assert s.loss_window_s >= 8 * rep.residual_as * 1e-18
    assert s.error_range_s >= 4 * s.loss_window_s > ONEWAY_S_PER_TURN / 2
    # a step is kept up to the unwrapper's limit, detected 8 sigma above the fibre
    assert s.step_keep_turns == 0.45
    assert s.step_detect_s >= 8 * frame_step_rms_s(RACK, rate)
    z = np.zeros(4, np.int16)
    bank.step(z, z)


def test_virtual_time_loop_delay_is_the_wire_arithmetic():
    # 4 channels on a 12 Mbaud UART: ADC frame 52 wire bytes, DAC 61, 0.833 us each,
    # 20 us latency each way, 100 us of host, +1.5 board ticks of DAC latch
    from tools.hil import simulate_link
    from hal import wire
    res, info = simulate_link(RACK, 4, "uart12m", 0.3)
    adc = wire.wire_len_max(wire.adc_payload_len(4))
    dac = len(wire.encode_dac(0, 0, np.full(4, 1 << 19), np.full(4, 1 << 15), np.zeros(4, int)))
    want = (adc + dac) * 10 / 12e6 + 2 * 20e-6 + 100e-6 + 1.5 / info["board_rate_hz"]
    assert info["frame_rate_hz"] == 10_000 and info["loop_delay_s"] == pytest.approx(want, abs=1e-6)
    assert all(r.state == "LOCKED" for r in res) and sum(r.slips for r in res) == 0
