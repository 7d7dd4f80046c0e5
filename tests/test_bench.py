"""`attobus bench`: it runs end to end, its rows are well formed, a failing group
is reported without stopping the others, and the tick bench's references do
the same servo work as the bank. No wall-time assertions: speed lives in the
bench output, never in a test."""
import json
import math

import numpy as np
import pytest

from firmware.bank import PZT_MID, tick_batch
from firmware.faults import LOCKED
from tools import bench_cmd
from tools.bench import Row
from tools.bench.tick import NCH, NumpyTick, SimplePidTick, locked_bank, synthetic_iq
from tools.cli import main


def _bench_json(capsys, *argv):
    rc = main(["bench", "--quick", "--json", *argv])
    out = capsys.readouterr().out
    return rc, json.loads(out)


def test_quick_json_every_group_runs_and_rows_are_well_formed(capsys):
    rc, doc = _bench_json(capsys)
    assert rc == 0, doc["failed"]
    assert doc["failed"] == []
    rows = doc["rows"]
    groups = [r["group"] for r in rows]
    for g in ("tick", "startup", "hal_loop"):
        assert g in groups
    for r in rows:
        assert set(r) >= {"group", "name", "value", "unit", "note"}
        v = r["value"]
        assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, r
        assert isinstance(r["unit"], str) and r["unit"], r
    # rows come grouped, groups in the bench's run order
    seen = list(dict.fromkeys(groups))
    assert seen == [g for g in bench_cmd.group_names() if g in seen]
    assert all(groups[k] == groups[k - 1] or groups[k] not in groups[:k] for k in range(1, len(groups)))
    m = doc["machine"]
    assert m["cpu_count"] >= 1 and m["python"] and m["numba"] and m["numpy"]


def test_only_restricts_groups_and_ratios_match_rates(capsys):
    rc, doc = _bench_json(capsys, "--only", "tick")
    assert rc == 0
    rows = {r["name"]: r for r in doc["rows"]}
    assert {r["group"] for r in doc["rows"]} == {"tick"}
    bank = rows["bank tick_batch"]["value"]
    # each ratio is the quotient of the two rates measured in the same run
    for ref, ratio in (("numpy float64 tick", "bank speed-up vs numpy"),
                       ("simple_pid x40 tick", "bank speed-up vs simple_pid")):
        assert rows[ratio]["value"] == pytest.approx(bank / rows[ref]["value"], rel=1e-9)
    assert rows["Bank.step latency p99"]["value"] >= rows["Bank.step latency p50"]["value"]
    assert "40/40 LOCKED before and 40/40 after" in rows["bank tick_batch"]["note"]


def test_unknown_group_is_refused(capsys):
    assert main(["bench", "--quick", "--only", "tick,nosuchgroup"]) == 2
    assert "nosuchgroup" in capsys.readouterr().err


def test_group_order_is_stable():
    names = bench_cmd.group_names()
    known = [n for n in bench_cmd.ORDER if n in names]
    rest = [n for n in names if n not in bench_cmd.ORDER]
    assert names == known + sorted(rest)
    assert {"tick", "startup", "hal_loop"} <= set(names)


def test_failing_group_becomes_error_row_and_others_still_run(monkeypatch, capsys):
    def boom(quick):
        raise RuntimeError("rig unplugged")

    def fine(quick):
        print("chatter that must not reach stdout")
        return [Row("fine", "speed", 2.0, "x", "ok")]

    monkeypatch.setattr(bench_cmd, "discover", lambda only=None: [("boom", boom), ("fine", fine)])
    assert main(["bench", "--quick", "--json"]) == 1
    cap = capsys.readouterr()
    doc = json.loads(cap.out)                        # stdout is the JSON object alone
    assert doc["failed"] == ["boom"]
    err, ok = doc["rows"]
    assert err["group"] == "boom" and err["name"] == "error" and err["value"] is None
    assert "RuntimeError: rig unplugged" in err["note"]
    assert ok == {"group": "fine", "name": "speed", "value": 2.0, "unit": "x", "note": "ok"}
    assert "chatter" in cap.err and "boom" in cap.err

    assert main(["bench", "--quick"]) == 1           # the table says so too
    table = capsys.readouterr().out
    assert "[boom]" in table and "rig unplugged" in table and "[fine]" in table
    assert "failed groups: boom" in table


def test_numpy_reference_tracks_the_bank():
    """The float64 numpy tick, started from the bank's locked state, gives the
    bank's PZT codes to within 16 LSB (the bank adds noise shaping and its
    integer atan2 / rounding), while the codes themselves move by several
    times that, so the agreement is not trivial."""
    bank = locked_bank()
    assert np.all(bank.state.chan_state == LOCKED)
    ref = NumpyTick(bank)
    i, q = synthetic_iq(500)
    out_ref = np.empty((500, NCH))
    ref.run(i.astype(np.float64), q.astype(np.float64), out_ref)
    pzt = np.empty((500, NCH), np.int32)
    tick_batch(bank.config, bank.state, i, q, pzt, pzt.copy(), pzt.copy())
    assert np.all(bank.state.chan_state == LOCKED)
    spread = np.ptp(pzt, axis=0)
    tolerance = 16
    assert np.median(spread) > 4 * tolerance and spread.min() > tolerance
    assert np.max(np.abs(out_ref - pzt)) <= tolerance


def test_simple_pid_reference_acts_on_the_phase():
    """The simple_pid reference turns the same I/Q into valid 20-bit codes that
    follow the phase noise, and sits at mid-scale on a noise-free phase."""
    pytest.importorskip("simple_pid")
    bank = locked_bank()
    n = 50
    i, q = synthetic_iq(n)
    ref = SimplePidTick(bank, bank.settings.loop_rate_hz)
    out = [[0] * NCH for _ in range(n)]
    ref.run(i.tolist(), q.tolist(), out)
    codes = np.array(out)
    assert codes.min() >= 0 and codes.max() < 2 * PZT_MID
    assert np.all(np.ptp(codes, axis=0) > 0)
    i0, q0 = synthetic_iq(n, noise_turn=0.0)
    ref0 = SimplePidTick(bank, bank.settings.loop_rate_hz)
    ref0.run(i0.tolist(), q0.tolist(), out)
    assert np.all(np.abs(np.array(out) - PZT_MID) <= 1)
