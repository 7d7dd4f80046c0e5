"""The board emulator's protocol side (sim_hw/board.py), driven in board time, no port.

Oracles: the host's own codec (hal.wire) decodes everything the board says; a
second rig built alike (sim_hw.rig.rig_run) gives the samples the frames must
average; the watchdog and ramp are checked against docs/protocol.md 11
written out here; the flash against hal.flash_image's own parser.
"""
import math

import numpy as np
import pytest

from hal import auth, wire
from hal import flash_image as fi
from hal.serial_backend import TruthReader
from hal.wire import BoardFlags, MsgType, NackReason, WatchdogState
from sim_hw.board import Board, BoardOptions, PowerLost
from sim_hw.rig import build_rig, rig_run
from sim_hw.scenarios import get_scenario

KEY = bytes(range(32))
R = 10_000.0               # front-end rate of these tests: 10 ticks per 1 ms frame


class Host:
    """The host side of a board under test: encodes what it sends, decodes what it gets."""

    def __init__(self, board, key=KEY, key_id=0):
        self.b = board
        self.enc = wire.Encoder(1000)
        self.dec = wire.Decoder()
        self.got = []
        self.signer = auth.Signer(key, key_id)

    def collect(self):
        for t, frame in self.b.sent:
            self.got += [(t, f) for f in self.dec.feed(frame)]
        self.b.sent.clear()

    def send(self, msg, t, sign=False):
        seq = self.enc.seq
        self.b.receive(self.enc.message(msg, self.signer if sign else None), t)
        self.collect()
        return seq

    def raw(self, msg_type, payload, t):
        seq = self.enc.seq
        self.b.receive(self.enc.frame(msg_type, payload), t)
        self.collect()
        return seq

    def at(self, t):
        self.b.advance(t)
        self.collect()

    def of(self, typ):
        return [(t, f.msg) for t, f in self.got if f.type == typ]

    def reply(self, ref_seq):
        r = [f for _, f in self.got if f.type in (MsgType.ACK, MsgType.NACK) and f.msg.ref_seq == ref_seq]
        assert len(r) == 1, r
        return r[0]


def make(n=2, **kw):
    kw.setdefault("link", "pty")
    kw.setdefault("frame_rate_hz", 1000.0)
    kw.setdefault("board_rate_hz", R)
    kw.setdefault("keys", {0: KEY})
    b = Board(BoardOptions(n_channels=n, **kw))
    return b, Host(b)


def test_silent_until_hello_then_caps_and_stream():
    b, h = make()
    h.at(0.25)
    hb = h.of(MsgType.HEARTBEAT)
    assert [round(t, 6) for t, _ in hb] == [0.1, 0.2] and not h.of(MsgType.ADC)
    assert b.wd_state == WatchdogState.SAFE
    h.send(wire.Hello(nonce=77), 0.2503)
    (t, caps), = h.of(MsgType.CAPS)
    assert (caps.nonce, caps.n_channels, caps.loop_rate_hz, caps.key_ids, caps.auth_counter,
            caps.watchdog_ms, caps.tick) == (77, 2, 10_000, 0b1, 0, 50, 2503)
    h.at(0.2555)
    adc = h.of(MsgType.ADC)
    assert [f.tick for _, f in adc] == [2509, 2519, 2529, 2539, 2549]     # last tick of each frame
    assert [round(t * R) for t, _ in adc] == [2510, 2520, 2530, 2540, 2550]
    assert all(f.presence == 0b11 for _, f in adc)


def test_frames_average_the_rig_and_truth_file_matches(tmp_path):
    path = tmp_path / "truth.bin"
    b, h = make(truth_path=str(path))
    h.send(wire.Hello(), 0.0)
    h.at(0.0301)
    # the same rig, run alone with the same (mid-scale) codes, tick by tick
    cfg, st = build_rig(get_scenario("rack10"), 2, 1, loop_rate_hz=R)
    n = 300
    i, q, tr = rig_run(cfg, st, np.full(2, 1 << 19), np.full(2, 1 << 15), np.zeros(2), n)
    reader = TruthReader(path, 2)
    mean, msq = np.zeros(2), np.zeros(2)
    adc = h.of(MsgType.ADC)
    assert len(adc) == 30
    for k, (_, f) in enumerate(adc):
        sl = slice(10 * k, 10 * k + 10)
        want_i = np.floor(np.abs(i[sl].mean(0)) + 0.5) * np.sign(i[sl].mean(0))
        want_q = np.floor(np.abs(q[sl].mean(0)) + 0.5) * np.sign(q[sl].mean(0))
        assert np.array_equal(f.i, want_i) and np.array_equal(f.q, want_q)
        assert reader.read(f.tick, mean, msq)
        assert np.allclose(mean, tr[sl].mean(0), rtol=0, atol=1e-24)
        assert np.allclose(msq, tr[sl].var(0), rtol=1e-6, atol=1e-36)
    assert not reader.read(12345, mean, msq) and np.isnan(mean).all()
    reader.close()
    b.close()


def test_dac_latched_from_the_tick_after_it_arrives():
    b, h = make()
    h.send(wire.Hello(), 0.0)
    h.at(0.0100)                                           # frame 0..9 produced, tick 99 at 0.01
    last = h.of(MsgType.ADC)[-1][1].tick
    codes = (np.array([0x12345, 0x54321]), np.array([1000, 2000]), np.array([-5, 5]))
    h.send(wire.DacFrame(last, *codes, hold=0b10), 0.01095)          # tick 109: latched by call 109
    h.at(0.0110)
    assert b.rig.pzt_code_applied[0] == 0x12345 and b.rig.pzt_code_applied[1] == 1 << 19
    assert b.rig.aom_ftw_applied[0] == -5 and b.rig.spool_code_applied[0] == 1000
    assert b.counters["dac_late"] == 0
    h.send(wire.DacFrame(last, np.array([7, 7]), np.array([7, 7]), np.array([7, 7])), 0.01101)
    h.at(0.0110)                                           # arrived during tick 110: not yet latched
    assert b.rig.pzt_code_applied[0] == 0x12345
    h.at(0.0120)
    assert list(b.rig.pzt_code_applied) == [7, 7]
    assert b.counters["dac_late"] == 1                     # answered a frame that was not the newest


def _ramp(held, safe, pos, length):
    # docs/protocol.md 11: held + (safe - held) t / ramp, rounded toward the held code
    return held + int((safe - held) * pos / length)


def test_watchdog_hold_ramp_safe_timings_and_codes():
    b, h = make()
    h.send(wire.Hello(), 0.0)
    safe = (np.array([0x10000, 0xF0000]), np.array([100, 60000]), np.array([0, -1000]))
    seq = h.send(wire.Config(watchdog_ms=10, hold_ms=20, ramp_ms=30, safe_pzt=safe[0],
                             safe_spool=safe[1], safe_dds=safe[2]), 0.0005, sign=True)
    assert h.reply(seq).type == MsgType.ACK
    held = (np.array([0x80100, 0x7FF00]), np.array([30000, 40000]), np.array([300, -300]))
    t_last = 0.00537
    h.send(wire.DacFrame(h.of(MsgType.ADC)[-1][1].tick if h.of(MsgType.ADC) else 0, *held), t_last)
    k_last = math.floor(t_last * R)
    states = {}
    for k in range(k_last + 10, k_last + 700, 10):      # frame by frame
        h.at(k / R)
        states[b.ticks_done] = (b.wd_state, b.rig.pzt_code_applied.copy(),
                                b.rig.spool_code_applied.copy(), b.rig.aom_ftw_applied.copy())
    log = [(round(t * R), s) for t, s in b.wd_log]
    k_hold = math.ceil((t_last + 0.010) * R)
    assert log[-3:] == [(k_hold, WatchdogState.HOLD), (k_hold + 200, WatchdogState.RAMP),
                        (k_hold + 500, WatchdogState.SAFE)]
    assert b.counters["watchdog_trips"] == 1
    for k, (s, p, sp, a) in states.items():
        if k <= k_hold + 200:                            # RUN and HOLD: the held codes
            want = held
        elif k < k_hold + 500:                           # RAMP, one step per tick
            pos = k - (k_hold + 200)
            want = [[_ramp(int(x), int(y), pos, 300) for x, y in zip(hc, sc)]
                    for hc, sc in zip(held, safe)]
        else:
            want = safe
        assert list(p) == list(want[0]) and list(sp) == list(want[1]) and list(a) == list(want[2]), k
    flags = [(round(t * R), f.board_flags) for t, f in h.of(MsgType.ADC)]
    assert all(f & BoardFlags.WATCHDOG_HOLD for k, f in flags if k_hold < k <= k_hold + 200)
    assert all(f & BoardFlags.WATCHDOG_RAMP for k, f in flags if k_hold + 200 < k <= k_hold + 500)
    assert all(f & BoardFlags.SAFE for k, f in flags if k > k_hold + 500)
    # SAFE: DAC frames refused until HELLO; HELLO arms it with the outputs where they are
    t = (k_hold + 700) / R
    seq = h.send(wire.DacFrame(0, *held), t)
    assert h.reply(seq).msg.reason == NackReason.NOT_ARMED
    h.send(wire.Hello(), t + 1e-4)
    h.at(t + 0.002)
    assert b.wd_state == WatchdogState.RUN and list(b.rig.pzt_code_applied) == list(safe[0])


def test_host_frame_in_hold_returns_to_run_without_moving():
    b, h = make()
    h.send(wire.Hello(), 0.0)
    h.send(wire.DacFrame(0, np.array([5, 6]), np.array([7, 8]), np.array([9, 10])), 0.001)
    h.at(0.0601)                                          # 50 ms watchdog: HOLD since 0.051
    assert b.wd_state == WatchdogState.HOLD
    h.send(wire.Heartbeat(1), 0.06015)
    assert b.wd_state == WatchdogState.RUN
    h.at(0.07)
    assert list(b.rig.pzt_code_applied) == [5, 6]
    assert b.counters["watchdog_trips"] == 1


def test_authentication_rejections_change_nothing_and_are_counted(tmp_path):
    store = auth.FileCounterStore(tmp_path / "ctr")
    b, h = make(counter_store=None) if False else (None, None)
    b = Board(BoardOptions(n_channels=2, link="pty", frame_rate_hz=1000.0, board_rate_hz=R,
                           keys={0: KEY}), counter_store=store)
    h = Host(b)
    h.send(wire.Hello(), 0.0)
    payload = h.signer.sign(MsgType.CONFIG, wire.Config(watchdog_ms=33).pack())
    good = h.enc.frame(MsgType.CONFIG, payload)
    seq_good = h.enc.seq - 1
    forged = bytearray(h.signer.sign(MsgType.CONFIG, wire.Config(watchdog_ms=1).pack()))
    forged[-1] ^= 1                                       # one bit of the tag
    other = auth.Signer(bytes(32), 0, counter=50)         # right key id, wrong key
    cases = [h.enc.frame(MsgType.CONFIG, bytes(forged)),
             h.enc.message(wire.Config(watchdog_ms=2), other),
             h.enc.message(wire.Config(watchdog_ms=3), auth.Signer(KEY, 3)),
             h.enc.frame(MsgType.CONFIG, bytes(10))]
    for frame in cases:
        b.receive(frame, 0.001)
    assert b.watchdog_ms == wire.WATCHDOG_MS_DEFAULT
    b.receive(good, 0.002)
    b.receive(good, 0.003)                  # the very same frame: dropped as a duplicate
    b.receive(h.enc.frame(MsgType.CONFIG, payload), 0.004)   # re-framed: a replay
    h.collect()
    nacks = [NackReason(f.msg.reason).name for _, f in h.got if f.type == MsgType.NACK]
    assert nacks == ["AUTH_BAD_TAG", "AUTH_BAD_TAG", "AUTH_UNKNOWN_KEY", "AUTH_TRUNCATED",
                     "AUTH_REPLAY"]
    assert h.reply(seq_good).type == MsgType.ACK
    assert b.watchdog_ms == 33
    assert b.dec.stats.duplicates == 1
    assert b.auth_rejects == {"truncated": 1, "unknown_key": 1, "bad_tag": 2, "replay": 1, "store": 0}
    assert b.counters["auth_rejects"] == 5
    # power cycle: the counter survives, the old command stays a replay
    b2 = Board(BoardOptions(n_channels=2, link="pty", frame_rate_hz=1000.0, board_rate_hz=R,
                            keys={0: KEY}), counter_store=auth.FileCounterStore(tmp_path / "ctr"))
    h2 = Host(b2)
    h2.send(wire.Hello(nonce=1), 0.0)
    assert h2.of(MsgType.CAPS)[0][1].auth_counter == 1        # the accepted command's counter
    b2.receive(h.enc.frame(MsgType.CONFIG, payload), 0.001)
    h2.collect()
    assert [NackReason(f.msg.reason).name for _, f in h2.got if f.type == MsgType.NACK] == ["AUTH_REPLAY"]
    assert b2.watchdog_ms == wire.WATCHDOG_MS_DEFAULT


def test_config_out_of_range_refused_by_host_and_board():
    with pytest.raises(wire.WireUsageError, match=r"watchdog_ms=0 out of range \[1, 10000\]"):
        wire.Config(watchdog_ms=0).pack()
    b, h = make()
    h.send(wire.Hello(), 0.0)
    good = wire.Config().pack()
    for field, bad in ((0, b"\x00\x00"), (4, (1001).to_bytes(2, "little"))):
        body = good[:2 * field] + bad + good[2 * field + 2:]
        seq = h.raw(MsgType.CONFIG, h.signer.sign(MsgType.CONFIG, body), 0.001)
        r = h.reply(seq)
        assert (r.type, r.msg.reason, r.msg.detail) == (MsgType.NACK, NackReason.RANGE, field)
    assert (b.watchdog_ms, b.divider) == (50, 10)
    seq = h.send(wire.Config(safe_pzt=np.zeros(3, int), safe_spool=np.zeros(3, int),
                             safe_dds=np.zeros(3, int)), 0.002, sign=True)
    assert h.reply(seq).msg.reason == NackReason.CHANNELS


def test_unknown_type_bad_version_and_malformed_are_nacked():
    b, h = make()
    h.send(wire.Hello(), 0.0)
    s1 = h.raw(0x7E, b"", 0.001)
    s2 = h.raw(MsgType.ADC, b"\x00", 0.001)               # a board never accepts ADC frames
    s3 = h.raw(MsgType.PING, b"\x01", 0.001)              # PING of the wrong length
    body = bytes([2, MsgType.HEARTBEAT]) + (9).to_bytes(4, "little") + (4).to_bytes(2, "little") + bytes(4)
    from hal.cobs import encode
    from hal.crc16 import crc16
    b.receive(encode(body + crc16(body).to_bytes(2, "little")) + b"\x00", 0.001)
    h.collect()
    assert h.reply(s1).msg.reason == NackReason.UNKNOWN_TYPE
    assert h.reply(s2).msg.reason == NackReason.UNKNOWN_TYPE
    assert h.reply(s3).msg.reason == NackReason.MALFORMED
    assert h.reply(9).msg.reason == NackReason.BAD_VERSION
    assert b.counters["rx_malformed"] == 4


def test_ping_reports_the_age_of_the_frame_it_answers():
    b, h = make()
    h.send(wire.Hello(), 0.0)
    h.at(0.0050)
    (t_f, f), = [x for x in h.of(MsgType.ADC) if x[1].tick == 49]
    h.send(wire.Ping(token=5, ref_tick=49), t_f + 3.04e-4)
    (_, p), = h.of(MsgType.PONG)
    assert (p.token, p.ref_tick, p.age_us, p.ticks_done) == (5, 49, 304, 53)
    h.send(wire.Ping(token=6, ref_tick=123456), 0.006)
    assert h.of(MsgType.PONG)[-1][1].age_us == wire.AGE_UNKNOWN


def test_override_force_and_release():
    b, h = make()
    h.send(wire.Hello(), 0.0)
    h.send(wire.DacFrame(0, np.array([1, 2]), np.array([3, 4]), np.array([5, 6])), 0.0005)
    seq = h.send(wire.ActuatorOverride(wire.OverrideMode.FORCE, 0b10, np.array([0, 0xABCDE]),
                                       np.array([0, 999]), np.array([0, -9])), 0.0011, sign=True)
    assert h.reply(seq).type == MsgType.ACK
    h.send(wire.DacFrame(0, np.array([11, 12]), np.array([13, 14]), np.array([15, 16])), 0.0015)
    h.at(0.003)
    assert list(b.rig.pzt_code_applied) == [11, 0xABCDE] and b.rig.aom_ftw_applied[1] == -9
    assert h.of(MsgType.ADC)[-1][1].board_flags & BoardFlags.OVERRIDE
    seq = h.send(wire.ActuatorOverride(wire.OverrideMode.RELEASE, 0b10), 0.0031, sign=True)
    h.at(0.004)
    assert list(b.rig.pzt_code_applied) == [11, 12]
    seq = h.send(wire.ActuatorOverride(wire.OverrideMode.FORCE, 0b1, np.array([1]), np.array([1]),
                                       np.array([1])), 0.0041, sign=True)
    assert h.reply(seq).msg.reason == NackReason.CHANNELS


def test_blade_events_presence_and_status():
    scen = get_scenario("rack10")
    new = dict(length_m=3.0, loss_db=0.5, serial=0xABCDEF, oneway_offset_s=1e-12)
    b, h = make(blade_events=[(0.0052, 1, "remove", {}), (0.0123, 1, "insert", new)])
    old_serial = int(b.rig.blade_serial[1])
    h.send(wire.Hello(), 0.0)
    h.at(0.02)
    ev = [(f.tick, e) for _, f in h.of(MsgType.ADC) for e in f.events]
    assert ev == [(59, (1, wire.BladeEventKind.REMOVED, old_serial)),
                  (129, (1, wire.BladeEventKind.INSERTED, 0xABCDEF))]
    pres = {f.tick: f.presence for _, f in h.of(MsgType.ADC)}
    assert pres[49] == 0b11 and pres[59] == 0b01 and pres[119] == 0b01 and pres[129] == 0b11
    h.send(wire.StatusRequest(), 0.0201)
    st = h.of(MsgType.STATUS)[-1][1]
    assert st.serials == (int(b.rig.blade_serial[0]), 0xABCDEF) and st.presence == 0b11
    del scen


def test_stream_divider_from_config():
    b, h = make()
    h.send(wire.Hello(), 0.0)
    h.send(wire.Config(stream_divider=25), 0.0001, sign=True)
    h.at(0.011)
    ticks = [f.tick for _, f in h.of(MsgType.ADC)]
    assert ticks[:3] == [9, 34, 59]                       # the change acts from the next frame
    assert all(f.board_flags & BoardFlags.CONFIG_CHANGED for _, f in h.of(MsgType.ADC)[:1])


# ----------------------------------------------------------------------------- flash

def _image(seq, **extra):
    cfg = {"board": {"watchdog_s": 0.02, "hold_s": 0.1}, "thresholds": {"lock_window_fs": 0.4},
           "channels": {0: {"safe_pzt_frac": 0.25}, 1: {"bandwidth_hz": 1500.0}},
           "blades": {0x1234: 1.5e-12, 0xFEDCBA: -2e-13}, **extra}
    return fi.build_image(cfg, seq)


def _write_frames(h, image, chunk=100):
    return [h.enc.message(wire.FlashWrite(off, len(image), image[off:off + chunk]), h.signer)
            for off in range(0, len(image), chunk)]


def test_flash_write_and_read_over_the_protocol():
    b, h = make(slot_size=1024)
    h.send(wire.Hello(), 0.0)
    img = _image(1)
    for k, fr in enumerate(_write_frames(h, img)):
        b.receive(fr, 0.001)
    h.collect()
    acks = [f.msg.detail for _, f in h.got if f.type == MsgType.ACK]
    assert acks == [min(100 * (k + 1), len(img)) for k in range(len(acks))] and acks[-1] == len(img)
    half = len(img) // 2
    h.send(wire.FlashRead(0xFF, 0, half), 0.002)
    h.send(wire.FlashRead(0xFF, half, len(img) - half), 0.002)
    data = b"".join(m.data for _, m in h.of(MsgType.FLASH_DATA))
    assert data == img and h.of(MsgType.FLASH_DATA)[0][1].slot == 0
    # the same seq again: refused at verification, the first image stays active
    h.got.clear()
    for fr in _write_frames(h, img):
        b.receive(fr, 0.003)
    h.collect()
    assert NackReason(h.got[-1][1].msg.reason) == NackReason.FLASH_VERIFY
    assert b.store.read_active().image == img
    # out of order, too large, out of the slot
    h.got.clear()
    frames = _write_frames(h, _image(2))
    b.receive(frames[1], 0.004)
    b.receive(h.enc.message(wire.FlashWrite(0, 2000, b"x"), h.signer), 0.004)
    h.send(wire.FlashRead(2, 0, 4), 0.004)
    h.collect()
    assert [NackReason(f.msg.reason).name for _, f in h.got if f.type == MsgType.NACK] == [
        "FLASH_OFFSET", "TOO_LARGE", "RANGE"]
    # a second image goes to the other slot and wins
    for fr in _write_frames(h, _image(2)):
        b.receive(fr, 0.005)
    act = b.store.read_active()
    assert (act.slot, act.seq) == (1, 2)


def test_power_cut_at_every_byte_of_a_flash_write_through_the_board():
    b, h = make(slot_size=256)
    old, new = _image(1), _image(2, channels={0: {"safe_pzt_frac": 0.75}})
    frames = _write_frames(h, new, chunk=64)
    base = fi.FlashMedium(512)
    fi.TwoSlotStore(base, 256).write(old)
    ops = 256 + len(new)                                  # erase, then every programmed byte
    outcomes = {"old": 0, "new": 0}
    for budget in range(ops + 1):
        medium = base.copy()
        medium.power_budget = budget
        b.medium, b.store, b._fw = medium, fi.TwoSlotStore(medium, 256), None
        b.verifier = auth.Verifier({0: KEY})
        b.dec.reset()                                     # a fresh boot: no sequence history
        cut = False
        try:
            for fr in frames:
                b.receive(fr, 0.001)
        except PowerLost:
            cut = True
        b.sent.clear()
        assert cut == (budget < ops), budget
        medium.power_budget = None                        # power back: the board boots
        b._load_flash()
        act = fi.TwoSlotStore(medium, 256).read_active()
        assert act.image in (old, new), budget
        assert not b.flash_fault, budget                  # an interrupted slot is not corrupt
        outcomes["new" if act.image == new else "old"] += 1
    assert outcomes["old"] == ops and outcomes["new"] == 1    # committed only by the last byte


def test_corrupt_image_reported_as_a_fault_never_replaced_by_defaults():
    medium = fi.FlashMedium(2048)
    store = fi.TwoSlotStore(medium, 1024)
    store.write(_image(1))
    store.write(_image(2))
    medium.data[1024 + 40] ^= 0x10                        # corrupt the newest (slot B)
    b, h = make(slot_size=1024) if False else (None, None)
    b = Board(BoardOptions(n_channels=2, link="pty", frame_rate_hz=1000.0, board_rate_hz=R,
                           slot_size=1024), medium=medium)
    h = Host(b)
    assert b.flash_fault and b.watchdog_ms == 20           # the valid image (seq 1) is applied
    h.send(wire.Hello(), 0.0)
    h.at(0.002)
    assert all(f.board_flags & BoardFlags.FLASH_FAULT for _, f in h.of(MsgType.ADC))
    medium.data[40] ^= 0x10                               # now neither slot is valid
    b2 = Board(BoardOptions(n_channels=2, link="pty", frame_rate_hz=1000.0, board_rate_hz=R,
                            slot_size=1024), medium=medium)
    h2 = Host(b2)
    assert b2.flash_fault and b2.watchdog_ms == wire.WATCHDOG_MS_DEFAULT
    h2.send(wire.Hello(), 0.0)
    seq = h2.send(wire.FlashRead(0xFF, 0, 24), 0.001)
    assert h2.reply(seq).msg.reason == NackReason.FLASH_SLOT


def test_image_settings_apply_at_power_up():
    medium = fi.FlashMedium(2048)
    fi.TwoSlotStore(medium, 1024).write(_image(1))
    b = Board(BoardOptions(n_channels=2, link="pty", frame_rate_hz=1000.0, board_rate_hz=R,
                           slot_size=1024), medium=medium)
    assert (b.watchdog_ms, b.hold_ms, b.ramp_ms) == (20, 100, wire.RAMP_MS_DEFAULT)
    assert list(b.safe[0]) == [1 << 18, 1 << 19] and not b.flash_fault
