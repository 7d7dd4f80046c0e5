"""tools.inject: the --inject grammar, and one closed-loop test per fault kind
checked against the rig's truth (the true one-way delay at the blade).

Each run: rack50, channel 0 the victim and channel 1 an untouched neighbour,
locked from ~43 ms (detection 1 ms, calibration 40 ms, lock 2 ms), the fault
at 60 ms. Latencies are those firmware/faults.py states; a turn of the round
trip is 2.585 fs of one-way delay, so "no slip" is checked as the truth
returning to within a small fraction of that.
"""
import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest

from firmware.faults import (ACQUIRING, EMPTY, FAULT, FLAG_BITS, HOLDOVER, LOCKED)
from sim_hw.scenarios import get_scenario
from tools import runner
from tools.inject import FaultEvent, parse_inject

RATE = 100e3
TURN_S = 2.5852e-15            # one round-trip turn of one-way delay
K0 = 6000                      # the fault tick (60 ms)


# ---------------------------------------------------------------- grammar

def test_parse_expands_channels_and_durations():
    ev = parse_inject("fade ch=0-2 t=0.5 dur=20ms db=30; remove ch=3 t=1; "
                      "adc_glitch ch=all t=250ms; insert ch=3 t=1.5 loss_db=3 length_m=12", 4, 2.0)
    kinds = [(round(t, 6), e.kind, e.channel, e.revert) for t, e in ev]
    assert kinds[:3] == [(0.25, "adc_glitch", c, False) for c in range(3)]
    assert (0.5, "fade", 0, False) in kinds and (0.52, "fade", None, True) in kinds
    assert sum(1 for k in kinds if k[1] == "fade" and not k[3]) == 3
    assert [t for t, _ in ev] == sorted(t for t, _ in ev)
    ins = [e for _, e in ev if e.kind == "insert"][0]
    assert ins.params == {"loss_db": 3.0, "length_m": 12.0} and ins.channel == 3
    fade = [e for _, e in ev if e.kind == "fade"][0]
    assert fade.value == 30.0
    glitch = [e for _, e in ev if e.kind == "adc_glitch"][0]
    assert glitch.params["dur"] == pytest.approx(100e-6)          # the default duration
    assert parse_inject("phase_jump ch=1 t=10us", 2, 1.0)[0][1].value == 0.5   # default 0.5 fs


@pytest.mark.parametrize("spec, msg", [
    ("", "empty"),
    ("melt ch=0 t=1", "unknown fault"),
    ("fade t=0.1", "ch= is required"),
    ("fade ch=0", "t= is required"),
    ("fade ch=9 t=0.1", "channel 9"),
    ("fade ch=0 t=5", "outside the run"),
    ("fade ch=0 t=0.1 hz=3", "fade takes"),
    ("fade ch=0 t=0.1 db=x", "not a number"),
    ("fade ch=0 t=0.1 db=-3", ">= 0"),
    ("fade ch=0 t=1h", "not a time"),
    ("fade ch=0 t=0.1 t=0.2", "given twice"),
    ("fade ch=0 t=0.1 dur=0", "dur must be > 0"),
    ("phase_jump ch=0 t=0.1 dur=1ms", "takes no dur"),
    ("fade ch=3-1 t=0.1", "use 3, 0-3"),
    ("fade ch=0 t=0.1 db", "key=value"),
    ("insert ch=0 t=0.1 length_m=0", "length_m"),
])
def test_parse_refusals_say_why(spec, msg):
    with pytest.raises(ValueError, match=msg):
        parse_inject(spec, 4, 2.0)


# ---------------------------------------------------------------- closed loop, per fault

class Grab:
    def __call__(self, rig_cfg, rig_st, bank):
        self.cfg, self.rig_st, self.bank = rig_cfg, rig_st, bank


def run(spec, seconds, scenario="rack50", n=2, seed=4, settings=None):
    g = Grab()
    res, rec = runner.run_fused(get_scenario(scenario) if isinstance(scenario, str) else scenario,
                                seconds, n, seed, bank_settings=settings,
                                events=[(0.0, g), *parse_inject(spec, n, seconds)])
    ev = {(e["ch"], e["kind"]): e for e in res.events}
    return g, res, rec, ev


def first(rec, ch, flag, k0=K0):
    hit = np.flatnonzero(rec.faults[k0:, ch] & FLAG_BITS[flag])
    return k0 + int(hit[0]) if hit.size else None


def truth_step(rec, ch, k0, k1, span=300):
    """Mean true delay after k1 minus before k0 (s)."""
    return np.nanmean(rec.truth[k1:k1 + span, ch]) - np.nanmean(rec.truth[k0 - span:k0, ch])


def neighbour_untouched(rec, k0=K0):
    assert np.all(rec.state[k0:, 1] == LOCKED)
    assert not np.any(rec.faults[k0:, 1])


def test_short_fade_is_bridged_keeping_the_cycle():
    """60 dB for 50 us: WEAK_RETURN at once, HOLDOVER, back to LOCKED with the
    cycle kept (no CYCLE_SLIP) and the truth where it was."""
    g, res, rec, ev = run("fade ch=0 t=60ms dur=50us db=60", 0.075)
    assert ev[(0, "fade")]["flag"] == "WEAK_RETURN" and ev[(0, "fade")]["latency_s"] <= 1 / RATE
    assert rec.state[K0, 0] == HOLDOVER
    assert rec.state[-1, 0] == LOCKED and first(rec, 0, "CYCLE_SLIP") is None
    assert abs(truth_step(rec, 0, K0, K0 + 500)) < 0.05 * TURN_S
    assert g.bank.state.slip_count[0] == 0 and g.bank.register("holdover_count")[0] == 1
    neighbour_untouched(rec)


def test_long_dark_fade_says_the_cycle_is_lost_then_relocks():
    """60 dB for 5 ms (longer than holdover_keep_cycle): the return is
    confirmed, the cycle declared lost (CYCLE_SLIP within relock_confirm + 1
    tick of the return), the channel relocks."""
    g, res, rec, ev = run("fade ch=0 t=60ms dur=5ms db=60", 0.08)
    k_back = K0 + 500
    k_slip = first(rec, 0, "CYCLE_SLIP")
    assert k_slip is not None and k_back <= k_slip <= k_back + 4
    assert rec.state[-1, 0] == LOCKED and g.bank.state.slip_count[0] == 1
    neighbour_untouched(rec)


def test_partial_fade_keeps_the_loop_running():
    """25 dB for 5 ms: weak (WEAK_RETURN live throughout) but the phase still
    trackable: the loop runs on, LOCKED, the cycle kept however long it lasts."""
    g, res, rec, ev = run("fade ch=0 t=60ms dur=5ms db=25", 0.075)
    assert ev[(0, "fade")]["latency_s"] <= 1 / RATE
    assert np.all(rec.state[K0:K0 + 500, 0] == LOCKED)
    assert np.all(rec.faults[K0:K0 + 500, 0] & FLAG_BITS["WEAK_RETURN"])
    assert first(rec, 0, "CYCLE_SLIP") is None and rec.state[-1, 0] == LOCKED
    assert abs(truth_step(rec, 0, K0, K0 + 1000)) < 0.05 * TURN_S


def test_remove_then_insert():
    """Removal: LOSS_OF_LOCK within a tick (the board's report), EMPTY; a new
    blade 10 ms later is calibrated and locked within 100 ms."""
    g, res, rec, ev = run("remove ch=0 t=60ms; insert ch=0 t=70ms length_m=33 loss_db=4", 0.13)
    rm, ins = ev[(0, "remove")], ev[(0, "insert")]
    assert rm["flag"] == "LOSS_OF_LOCK" and rm["latency_s"] <= 1 / RATE
    assert rec.state[K0, 0] == EMPTY and np.all(np.isnan(rec.truth[K0 + 1:7000, 0]))
    assert ins["lock_time_s"] is not None and ins["lock_time_s"] <= 0.1
    assert abs(g.bank.report()[0]["tau_rt_s"] - 2 * 33 * 4.9e-9) <= 0.01 * 2 * 33 * 4.9e-9
    neighbour_untouched(rec)


def test_pzt_stuck_saturates_then_faults():
    """A stuck PZT: the loop winds its command to the threshold (PZT_SAT live
    and sticky), loses lock, parks and retries, and after sat_fault_count
    losses latches FAULT."""
    g, res, rec, ev = run("pzt_stuck ch=0 t=60ms", 0.2)
    e = ev[(0, "pzt_stuck")]
    assert e["flag"] == "PZT_SAT" and e["latency_s"] is not None and e["latency_s"] < 0.02
    assert first(rec, 0, "LOSS_OF_LOCK") is not None
    assert FAULT in rec.state[K0:, 0] and g.bank.register("fault_count")[0] >= 1
    neighbour_untouched(rec)


def test_spool_stuck_raises_spool_sat_when_the_pzt_runs_out():
    """A stuck spool under a fast thermal ramp (0.5 K/s: 2.5 ps/s on 50 m),
    the in-lock AOM frequency trim off (it would take a drift this fast off
    the PZT and spool both): the offload cannot move the spool, the PZT takes
    the drift, and SPOOL_SAT comes when its mean passes pzt_alarm_frac,
    within an offload period or two of the PZT code getting there."""
    from dataclasses import replace
    scen = get_scenario("rack50").replace(temp_ramp_k_per_s=0.5, link_lengths_m=(50.0,))
    s = replace(runner.default_bank_settings(scen, 2), freq_trim_hz=1e9)
    g, res, rec, ev = run("spool_stuck ch=0 t=60ms", 0.9, scenario=scen, settings=s)
    e = ev[(0, "spool_stuck")]
    k_sat = first(rec, 0, "SPOOL_SAT")
    assert e["flag"] == "SPOOL_SAT" and k_sat is not None
    pzt = np.abs(rec.pzt[:, 0].astype(np.int64) - 2**19) / 2**19
    k_alarm = K0 + int(np.flatnonzero(pzt[K0:] >= 0.8)[0])
    assert k_alarm - 300 <= k_sat <= k_alarm + 2 * 256
    assert g.rig_st.spool_code_applied[0] == 2**15        # the spool never moved


def test_adc_glitch_is_flagged_and_bridged():
    """50 us of ADC garbage: ADC_OVERRANGE within the glitch, the samples not
    used (HOLDOVER), no slip, no false step, the truth unmoved. (Longer than
    holdover_keep_cycle less the confirmation, the cycle would be declared
    lost: test_long_dark_fade...)"""
    g, res, rec, ev = run("adc_glitch ch=0 t=60ms dur=50us", 0.075)
    e = ev[(0, "adc_glitch")]
    assert e["latency_s"] is not None and e["latency_s"] <= 50e-6
    for flag in ("CYCLE_SLIP", "NONRECIPROCITY", "LOSS_OF_LOCK"):
        assert first(rec, 0, flag) is None, flag
    assert rec.state[-1, 0] == LOCKED
    assert abs(truth_step(rec, 0, K0, K0 + 500)) < 0.05 * TURN_S
    neighbour_untouched(rec)


def test_small_phase_jump_is_corrected_and_flagged():
    """A 0.2 fs fibre jump (both directions: a 0.077-turn round-trip step):
    NONRECIPROCITY within relock_confirm + 1 tick, the step taken as it is (no
    slip) and corrected: the truth returns to where it was."""
    g, res, rec, ev = run("phase_jump ch=0 t=60ms fs=0.2", 0.075)
    e = ev[(0, "phase_jump")]
    assert e["flag"] == "NONRECIPROCITY" and e["latency_s"] <= 5 / RATE
    assert first(rec, 0, "CYCLE_SLIP") is None and rec.state[-1, 0] == LOCKED
    assert abs(truth_step(rec, 0, K0, K0 + 500)) < 0.05 * TURN_S


def test_large_phase_jump_says_the_cycle_is_lost():
    """A 0.6 fs jump (0.23 turn of round trip, beyond step_keep): cycle declared
    lost (CYCLE_SLIP) with NONRECIPROCITY, relocked."""
    g, res, rec, ev = run("phase_jump ch=0 t=60ms fs=0.6", 0.075)
    k_slip = first(rec, 0, "CYCLE_SLIP")
    assert k_slip is not None and k_slip <= K0 + 5
    assert first(rec, 0, "NONRECIPROCITY") is not None and rec.state[-1, 0] == LOCKED


def test_asymmetry_step_is_flagged_and_moves_the_blade_by_half():
    """A 0.4 fs non-reciprocal step of the return path (0.077 turn of round
    trip): NONRECIPROCITY within relock_confirm + 1 tick; the loop holds the
    round trip, so the blade's true time moves by -x/2 (what the flag warns of)."""
    g, res, rec, ev = run("asymmetry_step ch=0 t=60ms fs=0.4", 0.075)
    e = ev[(0, "asymmetry_step")]
    assert e["flag"] == "NONRECIPROCITY" and e["latency_s"] <= 5 / RATE
    assert abs(truth_step(rec, 0, K0, K0 + 500) + 0.2e-15) < 0.03e-15
    assert first(rec, 0, "CYCLE_SLIP") is None


def test_detune_on_a_locked_channel_is_reacquired_by_the_aom():
    """A 20 kHz detune of the return (0.2 turn per tick, beyond the slew limit):
    LOSS_OF_LOCK within a few ticks, the AOM takes the beat (-10 kHz of DDS
    offset, double-passed) and the channel locks again within 100 ms."""
    g, res, rec, ev = run("detune ch=0 t=60ms hz=20000", 0.11)
    e = ev[(0, "detune")]
    assert e["flag"] == "LOSS_OF_LOCK" and e["latency_s"] <= 10 / RATE
    relock = np.flatnonzero(rec.state[K0 + 10:, 0] == LOCKED)
    assert relock.size and relock[0] < 10000
    assert abs(g.bank.report()[0]["aom_offset_hz"] + 10e3) < 500
    neighbour_untouched(rec)


def test_detuned_blade_is_acquired_at_insertion():
    """A blade inserted with a 15 kHz detune: the calibration measures the beat
    beside the delay, the AOM takes it, the channel locks within 100 ms."""
    g, res, rec, ev = run("remove ch=0 t=50ms; detune ch=0 t=55ms hz=15000; insert ch=0 t=60ms",
                          0.16)
    assert ev[(0, "insert")]["lock_time_s"] <= 0.1
    assert abs(g.bank.report()[0]["aom_offset_hz"] + 7.5e3) < 300
    est = g.bank.report()[0]["tau_rt_s"]
    assert abs(est - g.rig_st.tau_rt_s[0]) <= 0.01 * g.rig_st.tau_rt_s[0]


def test_run_json_lists_every_fault_event():
    """attobus run --inject ... --json: the summary's "events" carry channel,
    flag and detection time of each injected fault."""
    from tools.cli import main
    out = io.StringIO()
    with redirect_stdout(out):
        main(["run", "--scenario", "rack50", "--channels", "2", "--duration", "0.07", "--json",
              "--inject", "fade ch=0 t=60ms dur=50us db=60; adc_glitch ch=1 t=65ms"])
    d = json.loads(out.getvalue().strip().splitlines()[-1])
    evs = {(e["ch"], e["kind"]): e for e in d["events"]}
    assert set(evs) == {(0, "fade"), (1, "adc_glitch")}
    for e in evs.values():
        assert e["flag"] in ("WEAK_RETURN", "ADC_OVERRANGE")
        assert e["t_detect_s"] >= e["t_s"] and 0 < e["latency_s"] <= 1e-4
