"""Hardware in the loop on one machine: the board emulator on a pseudo-terminal (or a
socket), the host through real pyserial, the bank in the loop.

The emulator runs in a thread here (a subprocess in test_board_cli.py). The
functional tests use rack10 with a tenth of its acoustic noise: at the 500 Hz
frame rate these tests can afford on a shared machine, the full rack10 band
moves a 10 m link by about a quarter turn per frame and the loop slips (that
is the planning table's point, docs/hil.md), which would hide what is tested
here. Oracles: the link's own fault counters, the board's watchdog log in
board time, the scenario's disturbance PSD.
"""
import json
import math
import socket
import sys
import time

import numpy as np
import pytest

from firmware.faults import COMM_TIMEOUT, EMPTY, LOCKED
from hal import auth, wire
from hal import flash_image as fi
from hal.backend import BackendError
from hal.frames import OutFrame
from hal.serial_backend import CommandRejected, CommTimeout, SerialBackend
from hal.wire import MsgType, NackReason, WatchdogState
from sim_hw.board import Board, BoardOptions, BoardServer
from sim_hw.link import Fault
from sim_hw.scenarios import draw_blade, get_scenario
from tools import analysis
from tools.hil import HostLoop, LinkPlant, cycles_lost, evaluate
from tools.loop_design import controller_tf

KEY = bytes(range(32))
QUIET = get_scenario("rack10").replace(acoustic_rms_s=0.1e-15)
FRAME_HZ = 250.0


@pytest.fixture
def serve(tmp_path):
    servers = []
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)            # the emulator thread and the host share the GIL

    def start(pty=True, **kw):
        kw.setdefault("scenario", QUIET)
        kw.setdefault("n_channels", 2)
        kw.setdefault("link", "uart12m")
        kw.setdefault("frame_rate_hz", FRAME_HZ)
        kw.setdefault("board_rate_hz", 20 * FRAME_HZ)
        kw.setdefault("keys", {0: KEY})
        kw.setdefault("truth_path", str(tmp_path / f"truth{len(servers)}.bin"))
        port = kw.pop("port", 0)
        srv = BoardServer(Board(BoardOptions(**kw)))
        where = srv.open_pty() if pty else "socket://%s:%d" % srv.listen("127.0.0.1", port)
        srv.start()
        servers.append(srv)
        return srv, where
    yield start
    for s in servers:
        s.stop()
    sys.setswitchinterval(old)


def _loop(srv, path, seconds, scenario=QUIET, key=True):
    b = SerialBackend(path, truth=srv.board.opts.truth_path, key=KEY if key else None)
    b.open()
    n = int(seconds * b.frame_rate_hz)
    loop = HostLoop(b, scenario, n)
    loop.build(loop.measure(0.15))
    return b, loop, n


def _free_running_rms_s(scen, length_m, f_hi_hz=50e3):
    f = np.geomspace(1.0, f_hi_hz, 20000)
    return math.sqrt(np.trapezoid(scen.fibre_psd_s2_per_hz(f, length_m), f))


def test_lock_hold_and_hot_swap_over_the_link(serve):
    new = draw_blade(QUIET, np.random.default_rng(5), 1)
    srv, path = serve()
    b, loop, n = _loop(srv, path, 2.6)
    srv.board.schedule_blade_event(srv.now() + 1.0, 1, "remove")
    srv.board.schedule_blade_event(srv.now() + 1.4, 1, "insert", new)
    assert b.frame_rate_hz == FRAME_HZ and b.stream_divider == 20
    assert 0 < loop.delay_frames < 3 and loop.report.phase_margin_deg >= 45
    loop.run(n)
    b.close()
    st = loop.rec.state[:loop.k]
    assert loop.k == n and (st[-1] == LOCKED).all()
    # channel 0 held lock from its first lock to the end while channel 1 was swapped
    first = int(np.argmax(st[:, 0] == LOCKED))
    assert first < 0.1 * FRAME_HZ and np.mean(st[first:, 0] == LOCKED) > 0.95
    # the host heard both blade events, with the serials the board has
    kinds = [(e.ch, e.kind, e.serial) for _, e in b.blade_events]
    assert kinds == [(1, wire.BladeEventKind.REMOVED, kinds[0][2]),
                     (1, wire.BladeEventKind.INSERTED, new["serial"])]
    # channel 1: out while removed, locked again soon after insertion
    gone = np.flatnonzero(st[:, 1] == EMPTY)
    assert gone.size > 0.1 * FRAME_HZ, (np.unique(st[:, 1], return_counts=True),
                                        loop.comm_events, b.skipped, srv.board.overrun_frames)
    back = gone[-1] + 1
    relock = int(np.argmax(st[back:, 1] == LOCKED)) / FRAME_HZ
    assert st[back:, 1][int(relock * FRAME_HZ)] == LOCKED and relock < 0.25
    assert not np.isnan(loop.rec.truth[back + 5:, 1]).any()
    # out of loop, over the residual band (1 Hz - 50 kHz: the frame means and the motion
    # inside the frames): well below the free-running disturbance of the same link
    res = {r.ch: r for r in evaluate(loop, False)}
    free = _free_running_rms_s(QUIET, float(srv.board.rig.length_m[0])) / 1e-18
    assert res[0].residual_as_rms is not None and res[0].residual_as_rms < free
    # below the crossover the loop suppresses as designed: 1-20 Hz of the frame means
    # against the model |S|^2 S_fibre over the same band (statistical slack x2)
    L0 = float(srv.board.rig.length_m[0])
    x = loop.rec.truth[first:loop.k, 0]
    low = analysis.residual_rms(x - x.mean(), FRAME_HZ, 1.0, 20.0) / 1e-18
    f = np.geomspace(1.0, 20.0, 400)
    bc, ac = controller_tf(loop.bank.settings.servo[0] if isinstance(loop.bank.settings.servo, tuple)
                           else loop.bank.settings.servo)
    bp, ap = LinkPlant(FRAME_HZ, loop.delay_frames).tf()
    z = np.exp(2j * np.pi * f / FRAME_HZ)
    S = 1 / (1 + np.polyval(bc, z) / np.polyval(ac, z) * np.polyval(bp, z) / np.polyval(ap, z))
    model = math.sqrt(np.trapezoid(np.abs(S) ** 2 * QUIET.fibre_psd_s2_per_hz(f, L0), f)) / 1e-18
    free_low = _free_running_rms_s(QUIET, L0, 20.0) / 1e-18
    assert model < 0.8 * free_low and low < 2.0 * model, (low, model, free_low)
    assert res[0].slips == 0
    assert cycles_lost(loop.rec.truth[:loop.k], st, FRAME_HZ)[0] == 0   # none the bank missed
    assert loop.aom_moves == 0            # the AOM live on the rig's clock, at rest: no beat


def test_link_faults_never_crash_and_losses_are_counted_exactly(serve):
    srv, path = serve()
    b, loop, n = _loop(srv, path, 2.4)
    t = srv.now() + 0.2
    plan = [("drop", {"p": 0.2}), ("dup", {"p": 0.2}), ("reorder", {"p": 0.2}),
            ("wrong", {"p": 0.2}), ("garbage", {"p": 0.3, "max_len": 30}), ("stuck", {}),
            ("intermittent", {"period_s": 0.04, "off_s": 0.015}), ("slow", {"factor": 200.0}),
            ("delayed", {"extra_s": 0.004})]
    for kind, p in plan:
        d = 0.08 if kind == "stuck" else 0.15
        f = Fault(kind, t, d, p)
        srv.up.add_fault(f)
        if kind == "intermittent":
            srv.down.add_fault(f)
        t += d + 0.05
    loop.run(n)
    time.sleep(0.05)
    up = srv.up.counters
    s = b.dec.stats
    b.close()
    for k in ("dropped", "duplicated", "reordered", "flipped", "garbage_bursts", "stuck_replaced",
              "off_dropped"):
        assert up[k] > 0, (k, up)
    assert b.reconnects == 0 and s.seq_resets == 0
    assert s.lost == srv.up.destroyed + srv.port_dropped   # losses counted exactly
    assert s.duplicates == up["duplicated"] + up["stuck_replaced"]
    assert s.reordered == up["reordered"]
    assert s.crc_errors + s.cobs_errors + s.malformed >= up["flipped"] + up["garbage_destroyed"]
    assert srv.board.counters["tx_dropped"] > 0            # slow: the board refused to queue
    assert srv.error is None                               # never a crash
    assert loop.comm_events                                # stuck: the host timed out, held
    assert any(e["flag"] == "COMM_TIMEOUT" for e in loop.fault_log.get(0, []))
    st = loop.rec.state[:loop.k]
    assert (st[-1] == LOCKED).all() and not (loop.bank.state.faults_live & COMM_TIMEOUT).any()
    lat = [x.age_s for x in b.latency if x.age_s is not None]
    assert max(lat) > 0.004                                # the delayed window was seen


def test_link_off_safe_state_timings_and_recovery(serve):
    srv, path = serve()
    b, loop, n = _loop(srv, path, 2.0)
    safe = np.array([0x40000, 0xC0000])
    b.configure(watchdog_ms=20, hold_ms=40, ramp_ms=60, safe_pzt=safe,
                safe_spool=np.full(2, 0x8000), safe_dds=np.zeros(2, int))
    t_off = srv.now() + 0.5
    f = Fault("off", t_off, 0.4)
    srv.up.add_fault(f)
    srv.down.add_fault(f)
    loop.run(n)
    b.close()
    bd = srv.board
    rate = bd.rate
    log = [(t, s) for t, s in bd.wd_log if t >= t_off - 1e-9]
    assert [s for _, s in log[:3]] == [WatchdogState.HOLD, WatchdogState.RAMP, WatchdogState.SAFE]
    # the last host frame before the cut arrived at last_rx <= t_off: HOLD 20 ms after it
    (t_hold, _), (t_ramp, _), (t_safe, _) = log[:3]
    assert t_off + 0.020 - 0.004 <= t_hold <= t_off + 0.020 + 1 / rate
    assert t_ramp - t_hold == pytest.approx(0.040, abs=1 / rate)
    assert t_safe - t_ramp == pytest.approx(0.060, abs=1 / rate)
    assert bd.counters["watchdog_trips"] >= 1
    # the host: COMM_TIMEOUT and hold, about as long as the cut; re-armed the board after
    out = loop.comm_events[0]
    assert out[1] is not None and 0.3 < out[1] - out[0] < 0.6
    assert b.rearms >= 1 and bd.wd_state == WatchdogState.RUN
    st = loop.rec.state[:loop.k]
    assert (st[-1] == LOCKED).all()


def test_commands_replays_forgeries_and_ranges_over_the_pty(serve):
    srv, path = serve()
    b = SerialBackend(path, key=KEY)
    b.open()
    bd = srv.board
    assert isinstance(b.configure(watchdog_ms=40), wire.Ack)
    assert bd.watchdog_ms == 40
    rx = bd.counters["rx_ok"]
    with pytest.raises(ValueError, match=r"watchdog_ms=0 out of range \[1, 10000\]"):
        b.configure(watchdog_ms=0)
    with pytest.raises(ValueError, match="pzt_code"):
        b.override(wire.OverrideMode.FORCE, 1, np.array([1 << 20, 0]), np.zeros(2, int), np.zeros(2, int))
    time.sleep(0.02)
    assert bd.counters["rx_ok"] - rx < 5                   # only stream frames: nothing sent
    # a recorded command, played again in a new frame
    payload = b.signer.sign(MsgType.CONFIG, wire.Config(watchdog_ms=41, stream_divider=20).pack())
    for expect in (MsgType.ACK, MsgType.NACK):
        seq = b.enc.seq
        b.send_raw(b.enc.frame(MsgType.CONFIG, payload))
        r = b.await_reply(MsgType.CONFIG, seq)
        assert r.type == expect
    assert NackReason(r.msg.reason) == NackReason.AUTH_REPLAY
    assert str(CommandRejected(MsgType.CONFIG, r.msg.reason, r.msg.detail)).startswith(
        "board refused CONFIG: AUTH_REPLAY: counter not above the last accepted one")
    # forged: another key; and no key at all
    b.signer = auth.Signer(bytes(32), 0, counter=b.signer.counter)
    with pytest.raises(CommandRejected, match="AUTH_BAD_TAG"):
        b.configure(watchdog_ms=99)
    b.signer = auth.Signer(KEY, 5, counter=b.signer.counter)
    with pytest.raises(CommandRejected, match="AUTH_UNKNOWN_KEY"):
        b.configure(watchdog_ms=99)
    b.signer = None
    with pytest.raises(BackendError, match="must be signed"):
        b.configure(watchdog_ms=99)
    assert bd.watchdog_ms == 41
    assert bd.auth_rejects["replay"] == 1 and bd.auth_rejects["bad_tag"] == 1
    assert bd.auth_rejects["unknown_key"] == 1
    st = b.status()
    assert st.counters["auth_rejects"] == 3
    b.close()


def test_flash_over_the_pty_and_a_power_cut_mid_write(serve):
    cfg = {"board": {"watchdog_s": 0.03}, "channels": {0: {"bandwidth_hz": 800.0}},
           "blades": {0xBEEF: 2.5e-12}, "unknown": [(0x0777, b"future")]}
    medium = fi.FlashMedium(2 * 1024)
    fi.TwoSlotStore(medium, 1024).write(fi.build_image(cfg, 1))
    old = fi.TwoSlotStore(medium, 1024).read_active().image
    srv, path = serve(slot_size=1024)
    srv.board.medium = medium
    srv.board.store = fi.TwoSlotStore(medium, 1024)
    b = SerialBackend(path, key=KEY)
    b.open()
    assert b.flash_read_active() == old
    new = fi.build_image({**cfg, "board": {"watchdog_s": 0.04}}, 2)
    medium.power_budget = 1024 + len(new) // 2            # dies while programming records
    with pytest.raises(BackendError):
        b.flash_write(new, timeout_s=0.3)
    b.close()
    time.sleep(0.05)
    assert srv.board.power_lost and srv.error is not None
    medium.power_budget = None                             # power back: a new board, same flash
    srv2, path2 = serve(slot_size=1024)
    bd = srv2.board
    bd.medium, bd.store = medium, fi.TwoSlotStore(medium, 1024)
    b = SerialBackend(path2, key=KEY)
    b.open()
    assert b.flash_read_active() == old                    # the previous image, intact
    b.flash_write(new)
    assert b.flash_read_active() == new
    assert fi.parse_image(b.flash_read_slot(1)[:len(new)])["unknown"] == [(0x0777, b"future")]
    b.close()


def test_reconnect_with_back_off_over_a_socket(serve):
    port = _free_port()
    srv, url = serve(pty=False, port=port)
    b = SerialBackend(url, comm_timeout_s=0.03, reconnect_after_s=0.06)
    b.open()
    out = OutFrame.mid_scale(2)
    for _ in range(20):
        b.exchange(out)
    srv.stop()                                             # the board goes away
    t_end = time.perf_counter() + 0.4
    timeouts = 0
    while time.perf_counter() < t_end:
        try:
            b.exchange(out)
        except CommTimeout:
            timeouts += 1
    assert timeouts >= 5
    serve(pty=False, port=port)                            # and comes back on the same port
    t_end = time.perf_counter() + 5.0
    got = 0
    while time.perf_counter() < t_end and got < 20:
        try:
            b.exchange(out)
            got += 1
        except CommTimeout:
            pass
    assert got == 20 and b.reconnects >= 1 and b.port_errors >= 1
    b.close()


def test_no_board_is_a_clear_error():
    b = SerialBackend("loop://")
    b.HELLO_TRIES = 2
    with pytest.raises(BackendError, match="no CAPS from a board at loop://"):
        b.open()
    with pytest.raises(ValueError, match="does not take"):
        SerialBackend.from_url("serial:///dev/null?speed=9")


def test_attobus_run_through_the_emulator(serve, capsys):
    from tools.cli import main
    srv, path = serve(scenario="rack10")
    url = f"serial://{path}?truth={srv.board.opts.truth_path}"
    code = main(["run", "--hal", url, "--duration", "1.0", "--json", "--scenario", "rack10"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1                                       # rack10's 10 as bar needs 100 kHz
    assert out["loop_rate_hz"] == FRAME_HZ and out["link"]["stream_divider"] == 20
    assert out["link"]["frames"] == int(FRAME_HZ)
    assert any(c["lock_time_s"] is not None for c in out["channels"])
    assert any(c["residual_as_rms"] for c in out["channels"])
    assert out["link"]["efficiency"]["out"] > 0.7


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p
