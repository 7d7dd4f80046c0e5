"""Closed-loop runs on the simulated rig, judged out of loop against the rig's truth."""
import json
import math

import numpy as np
import pytest

from firmware.bank import Bank, default_servo
from sim_hw.scenarios import get_scenario
from tools import runner
from tools.cli import main
from tools.loop_design import PzPlant, analyse


def _predicted_residual_as(scenario, length_m):
    """The loop model's out-of-loop residual for this link (acoustic + thermal PSD)."""
    psd = lambda f: scenario.fibre_psd_s2_per_hz(f, length_m)
    return analyse(default_servo(scenario.loop_rate_hz), PzPlant(rate_hz=scenario.loop_rate_hz),
                   psd).residual_as


@pytest.mark.parametrize("seed", [1, 7])
def test_rack10_residual_matches_the_loop_model(seed):
    """Every channel locks, never slips, and its measured out-of-loop residual
    agrees with the model's prediction for its link length (independent of
    the run: frequency responses x the scenario's analytic PSD)."""
    scen = get_scenario("rack10")
    res, rec = runner.run_fused(scen, 1.5, 4, seed)
    from sim_hw.rig import build_rig
    _, rig_st = build_rig(scen, 4, seed)
    for ch in res.channels:
        assert ch.state == "LOCKED" and ch.slips == 0 and ch.lock_time_s < 0.05
        want = _predicted_residual_as(scen, float(rig_st.length_m[ch.ch]))
        assert ch.residual_as_rms == pytest.approx(want, rel=0.25), (ch.ch, ch.residual_as_rms, want)
        # no blade was removed: the rig's truth is defined for the whole run
        assert np.isfinite(rec.truth[:, ch.ch]).all()


def test_closed_loop_suppresses_the_free_running_disturbance():
    scen = get_scenario("rack10")
    closed, _ = runner.run_fused(scen, 1.0, 2, 3)
    opened, _ = runner.run_fused(scen, 1.0, 2, 3, open_loop=True)
    for c, o in zip(closed.channels, opened.channels):
        assert o.residual_as_rms > 10 * c.residual_as_rms
        assert not o.met_bar


def test_rack50_offload_keeps_the_pzt_inside_its_range():
    scen = get_scenario("rack50")
    res, rec = runner.run_fused(scen, 3.0, 2, 2)
    for ch in res.channels:
        assert ch.state == "LOCKED" and ch.slips == 0
        assert ch.residual_as_rms < 100
        assert ch.pzt_peak_frac < 0.8
    # the spool moved: the offload is active while locked
    assert np.any(rec.spool[-1] != rec.spool[0])


def test_fused_and_stepped_paths_are_bit_identical():
    """The fused co-simulation equals stepping the bank through the sim:// Backend."""
    from hal.sim_backend import SimBackend
    from tools.presets import bank_settings_for
    scen = get_scenario("rack10")
    n, ticks = 3, 600
    _, rec_f = runner.run_fused(scen, ticks / scen.loop_rate_hz, n, 5, chunk_s=0.0017)
    backend = SimBackend("rack10", n, 5)
    bank = Bank(bank_settings_for(scen, n))
    rec_s = runner.Recorder(ticks, n)
    with backend:
        runner.run_stepped(backend, bank, ticks, rec_s)
    for name in ("truth", "pzt", "spool", "state", "err"):
        np.testing.assert_array_equal(getattr(rec_f, name), getattr(rec_s, name), err_msg=name)


def test_run_json_record_and_exit_code(tmp_path, capsys):
    out = tmp_path / "run.npz"
    code = main(["run", "--duration", "0.2", "--channels", "2", "--seed", "4", "--json",
                 "--record", str(out)])
    d = json.loads(capsys.readouterr().out)
    assert set(d) >= {"scenario", "seed", "loop_rate_hz", "realtime_factor", "channels"}
    assert d["scenario"] == "rack10" and d["seed"] == 4 and len(d["channels"]) == 2
    for c in d["channels"]:
        assert set(c) >= {"ch", "state", "residual_as_rms", "tdev_1s_as", "lock_time_s", "slips",
                          "pzt_peak_frac", "faults"}
    assert code == (0 if all(c["met_bar"] for c in d["channels"]) else 1)
    z = np.load(out)
    assert float(z["sample_rate_hz"]) == 100e3
    assert z["true_delay_s"].shape == (20000, 2) and z["pzt_code"].shape == (20000, 2)
    assert z["state"].dtype == np.uint8 and "LOCKED" in list(z["state_names"])
    assert z["faults_live"].shape == (20000, 2)


def test_threads_change_nothing_but_the_speed(capsys):
    """`--threads` splits the co-simulation into channel blocks: the JSON of a
    run is the same for 1 and 3 threads, all but the real-time factor."""
    outs = []
    for threads in ("1", "3"):
        main(["run", "--duration", "0.05", "--channels", "9", "--seed", "2", "--json",
              "--threads", threads])
        d = json.loads(capsys.readouterr().out)
        d.pop("realtime_factor")
        outs.append(d)
    assert outs[0] == outs[1] and len(outs[0]["channels"]) == 9


def test_open_loop_exit_code_is_nonzero(capsys):
    assert main(["run", "--duration", "0.05", "--channels", "1", "--open-loop", "--json"]) == 1


@pytest.mark.parametrize("argv, words", [
    (["run", "--scenario", "rack99", "--duration", "0.01"], "rack10"),
    (["run", "--hal", "bogus://x", "--duration", "0.01"], "scheme"),
    (["run", "--hal", "sim://rack10?colour=red", "--duration", "0.01"], "colour"),
    (["run", "--scenario", "longhaul", "--channels", "9", "--duration", "0.01"], "at most 4"),
    (["run", "--hal", "serial:///dev/null", "--threads", "2", "--duration", "0.01"], "sim://"),
])
def test_bad_input_gets_a_clear_error(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error" in err and words in err


@pytest.mark.parametrize("argv", [["run", "--duration", "-1"], ["run", "--channels", "0"],
                                  ["run", "--duration", "nan"], ["run", "--threads", "0"],
                                  ["run", "--threads", "two"]])
def test_bad_numbers_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_plot_writes_a_png(tmp_path, capsys):
    out = tmp_path / "run.png"
    main(["run", "--duration", "0.1", "--channels", "2", "--json", "--plot", str(out),
          "--plot-channels", "0,1"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["run", "--duration", "0.05", "--channels", "2", "--json", "--plot", str(out),
                 "--plot-channels", "5"]) == 2


def test_open_backend_builds_the_backend_a_url_names():
    from hal.backend import open_backend
    from hal.sim_backend import SimBackend
    b = open_backend("sim://rack50?channels=2&seed=3")
    assert isinstance(b, SimBackend) and b.capabilities.n_channels == 2
    assert b.scenario.name == "rack50" and b.capabilities.has_truth
    with pytest.raises(ValueError, match="scheme"):
        open_backend("tcp://localhost")
