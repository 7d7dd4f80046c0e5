"""Link loops in virtual time (tools.hil.simulate_link): each emulated link speed, at
the channel count docs/hil.md recommends for it, locks every channel and holds it
with no slip (the bank's count and the cycles really lost, from the ground truth);
the AOM phase model of a link-rate bank (the rig's own DDS clock, the AOM live)
matches the rig behind the board; the delay calibration over a link
measures the link's timing, not the fibre (why link loops run calibrate="never")."""
import dataclasses

import numpy as np
import pytest

from firmware.bank import Bank
from firmware.calibration import aom_model_step
from firmware.faults import EMPTY, LOCKED
from firmware.units import ONEWAY_S_PER_TURN
from hal import wire
from sim_hw.board import Board, BoardOptions
from sim_hw.scenarios import get_scenario
from tools.hil import aom_latency_frames, bank_settings_for_link, cycles_lost, simulate_link

RACK = get_scenario("rack10")


def on_links_of(length_m):
    """rack10 with every channel on a link of length_m (rack10 draws 1-10 m per blade)."""
    return dataclasses.replace(RACK, link_lengths_m=(float(length_m),))


# ----------------------------------------------------------------------------- settings

@pytest.mark.parametrize("delay, want", [(0.0, 1), (0.49, 1), (0.5, 2), (1.297, 2), (1.797, 3),
                                         (2.642, 4), (3.317, 4), (4.61, 6), (5.49, 6), (9.0, 6)])
def test_aom_latency_is_the_nearest_frame_after_the_delay(delay, want):
    # the word answering frame k lands delay frames after its end: mostly in
    # frame k + 1 + round(delay); the bank's ring holds at most 6
    assert aom_latency_frames(delay) == want


# ----------------------------------------------------------------------------- AOM model

def _drive_board(n, seed, word_of_frame, n_frames, link="uart1m", answer_frames=0.3):
    """The board emulator with a host that answers every ADC frame answer_frames
    frame periods after it is sent, PZT and spool at mid-scale and the AOM word
    word_of_frame(k) for frame k. -> (board, complex I + jQ [frames, n])."""
    b = Board(BoardOptions(scenario=RACK, n_channels=n, seed=seed, link=link))
    enc, dec = wire.Encoder(), wire.Decoder()
    T = 1.0 / b.frame_rate_hz
    pending = [(0.0, enc.message(wire.Hello()))]
    iq = []
    pzt, spool = np.full(n, wire.PZT_MID), np.full(n, wire.SPOOL_MID)
    while len(iq) < n_frames:
        t = min([b.next_event_time()] + [p[0] for p in pending])
        for at, data in [p for p in pending if p[0] <= t]:
            b.receive(data, at)
        pending = [p for p in pending if p[0] > t]
        b.advance(t)
        sent, b.sent[:] = list(b.sent), []
        for at, frame in sent:
            for f in dec.feed(frame):
                if f.type != wire.MsgType.ADC or len(iq) >= n_frames:
                    continue
                word = np.full(n, word_of_frame(len(iq)), np.int32)
                iq.append(f.msg.i.astype(float) + 1j * f.msg.q.astype(float))
                pending.append((at + answer_frames * T, enc.dac(f.msg.tick, pzt, spool, word)))
    return b, np.array(iq)


@pytest.mark.parametrize("link, rate, tol_mean, tol_frame", [("uart1m", 1000.0, 3e-4, 0.1),
                                                             ("uart12m", 10_000.0, 1e-5, 0.005)])
def test_aom_model_matches_the_rig_behind_the_board_at_a_link_rate(link, rate, tol_mean, tol_frame):
    """1 kHz and 10 kHz frames, 2 channels: the same rig (same seed) run twice,
    once with the AOM at 0 and once stepped to a word a (0.2 turn per frame) from
    frame 100 on. The difference of the two runs' phases is the AOM's alone (the
    fibre, laser and noise cancel exactly): after the switch it advances by the
    bank's model 2 a f_clk T per frame (firmware.calibration.aom_model_step with
    the link bank's kq16: the 1 GHz clock at a 0.1-1 ms tick, far past the old
    Q16 limit), and the model's running sum with the link latency follows it to
    within the sub-frame landing of the word. Tolerances: the fibre's motion
    inside a frame bends the averaged phasor of the AOM's ramp by up to 0.03
    turn per frame at 1 kHz, 3e-4 at 10 kHz (measured); the mean step over 195
    frames telescopes to two such errors / 195."""
    n, k_on, n_frames = 2, 100, 300
    a = int(round(0.1 * rate / RACK.aom_hz_per_ftw))          # 0.2 turn per frame
    b0, z0 = _drive_board(n, 3, lambda k: 0, n_frames, link)
    b1, z1 = _drive_board(n, 3, lambda k: a if k >= k_on else 0, n_frames, link)
    assert b0.frame_rate_hz == rate
    d = np.unwrap(np.angle(z1 / z0), axis=0) / (2 * np.pi)     # turns
    assert np.abs(d[:k_on]).max() < 1e-9                        # identical runs before
    delay = 0.3 + 1.5 / b0.divider                              # answer + DAC latch, frames
    s, _ = bank_settings_for_link(RACK, n, rate, delay)
    cfg = Bank(s).config
    m = aom_model_step(a, a, cfg.aom_kq16, cfg.aom_average) / 2 ** 32
    # the model against the rig's own figure: 2 df T turns, df = a x (Hz per code)
    assert m == pytest.approx(2 * a * RACK.aom_hz_per_ftw / rate, abs=2.0 ** -31)
    step = np.diff(d, axis=0)[k_on + 5:]
    assert np.abs(step.mean(axis=0) - m).max() < tol_mean
    assert np.abs(step - m).max() < tol_frame
    # the model's running sum, word k shown from sample k + latency
    lat = s.aom_latency_ticks
    words = np.array([a if k >= k_on else 0 for k in range(n_frames)], np.int64)
    model = np.zeros(n_frames)
    for k in range(1, n_frames):
        f_now = words[k - lat] if k - lat >= 0 else 0
        f_prev = words[k - 1 - lat] if k - 1 - lat >= 0 else 0
        model[k] = model[k - 1] + aom_model_step(f_now, f_prev, cfg.aom_kq16, cfg.aom_average) / 2 ** 32
    off = d[k_on + 5:] - model[k_on + 5:, None]
    assert np.abs(off - off.mean(axis=0)).max() < tol_frame     # a constant: the landing time
    assert np.abs(off.mean(axis=0)).max() <= m                  # within one frame's advance


# ----------------------------------------------------------------------------- lock and hold

# (link, channels, link length m): the recommendation of docs/hil.md section 4
RECOMMENDED = [("uart1m", 1, 5.0), ("uart12m", 20, 10.0), ("usbhs", 40, 10.0)]


@pytest.mark.parametrize("link, n, length", RECOMMENDED)
@pytest.mark.parametrize("seed", [21, 22, 23])
def test_each_link_locks_and_holds_at_its_recommended_channel_count(link, n, length, seed):
    res, info = simulate_link(on_links_of(length), n, link, 0.5, seed=seed)
    assert info["frames"] == round(0.5 * info["frame_rate_hz"])
    for r in res:
        assert r.state == "LOCKED" and r.lock_time_s is not None and r.lock_time_s < 0.05, r
        assert r.slips == 0, r
        assert not {f["flag"] for f in r.faults} & {"LOSS_OF_LOCK", "CYCLE_SLIP"}, r.faults
    assert info["cycles_lost"] == [0] * n                       # none the bank missed either
    assert info["aom_moves"] == 0                               # no beat on a rack: AOM at rest


def test_cycles_lost_counts_whole_turns_of_the_truth():
    rate = 1000.0
    rng = np.random.default_rng(0)
    x = 0.1 * ONEWAY_S_PER_TURN * rng.standard_normal((3000, 3))
    x[1500:, 1] += ONEWAY_S_PER_TURN                            # one cycle lost
    x[1000:, 2] -= ONEWAY_S_PER_TURN                            # one lost, ...
    x[2000:, 2] -= ONEWAY_S_PER_TURN                            # ... and another
    state = np.full((3000, 3), LOCKED, np.uint8)
    state[:200, 0] = EMPTY
    assert cycles_lost(x, state, rate).tolist() == [0, 1, 2]


# ----------------------------------------------------------------------------- calibration

def test_delay_calibration_over_a_link_measures_the_links_timing():
    """Why link loops run calibrate="never" (docs/hil.md section 3): over a 12 Mbaud
    UART (10 kHz frames) the calibration's estimate is the same for every channel,
    tens of microseconds (where the tuning word lands inside a frame), whatever
    the blade's true round trip (tens of ns), and is refused as out of range.
    Small steps (0.1 turn) so that the step check lets it finish."""
    res, info = simulate_link(RACK, 4, "uart12m", 0.35, seed=2, calibrate="auto",
                              overrides=dict(cal_step_turns=(0.025, 0.1), cal_time_s=0.2))
    cal = info["calibration"]
    est = np.array([c["tau_rt_s"] for c in cal])
    true = np.array([c["true_tau_rt_s"] for c in cal])
    assert all(c["status"] == "tau_rt out of range" and not c["cal_ok"] for c in cal)
    assert true.max() < 200e-9 and np.abs(est).min() > 10e-6
    assert np.ptp(est) < 0.1 * np.abs(est).mean()               # common to all channels
