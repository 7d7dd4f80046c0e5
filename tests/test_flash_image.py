"""Flash image: TLV round trip, forward compatibility, corruption, two-slot power-cut safety, TOML."""
import math
import struct
import zlib

import pytest
from hypothesis import given, strategies as st

from hal import flash_image as fi

CFG = {
    "thresholds": {"detect_power_dbm": -50.0, "lock_window_fs": 0.5, "unlock_window_fs": 1.0},
    "board": {"watchdog_s": 0.05, "ramp_s": 1.0},
    "channels": {0: {"bandwidth_hz": 3000.0, "notch_hz": 30e3}, 39: {"enabled": 0.0}},
    "blades": {0x0123456789ABCDEF: 1.25e-12, 2**64 - 1: -3e-15},
}


def norm(cfg):
    out = {k: cfg.get(k, {}) for k in ("thresholds", "board", "channels", "blades")}
    out["unknown"] = list(cfg.get("unknown", []))
    return out


def strip(parsed):
    return {k: v for k, v in parsed.items() if k not in ("seq", "schema")}


finite = st.floats(allow_nan=False, allow_infinity=False)
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=40)
configs = st.fixed_dictionaries({
    "thresholds": st.dictionaries(names, finite, max_size=6),
    "board": st.dictionaries(names, finite, max_size=4),
    "channels": st.dictionaries(st.integers(0, 63), st.dictionaries(names, finite, max_size=5), max_size=8),
    "blades": st.dictionaries(st.integers(1, 2**64 - 1), finite, max_size=8),
    "unknown": st.lists(st.tuples(st.integers(0x0100, 0x7FFF), st.binary(max_size=40)), max_size=3),
})


@given(configs, st.integers(1, 2**32 - 1))
def test_round_trip(cfg, seq):
    img = fi.build_image(cfg, seq)
    got = fi.parse_image(img)
    assert got["seq"] == seq and got["schema"] == fi.SCHEMA
    assert strip(got) == norm(cfg)
    assert fi.build_image(got, seq) == img          # canonical: rebuilding is byte-identical


def test_header_layout_and_crc():
    img = fi.build_image(CFG, 7)
    magic, schema, hdr_len, seq, body_len, flags, crc = struct.unpack_from("<4sHHIIII", img)
    assert (magic, schema, hdr_len, seq, flags) == (b"ATBF", 1, 24, 7, 0)
    assert body_len == len(img) - 24
    assert crc == zlib.crc32(img[:20] + img[24:])
    assert zlib.crc32(b"123456789") == 0xCBF43926   # CRC-32/ISO-HDLC check value


def add_tlv(img, t, value):
    """Append a TLV to an image and fix length and CRC (what a newer writer would do)."""
    body = img[24:] + struct.pack("<HH", t, len(value)) + value
    head = bytearray(img[:24])
    struct.pack_into("<I", head, 12, len(body))
    struct.pack_into("<H", head, 4, 2)              # written by schema 2
    struct.pack_into("<I", head, 20, zlib.crc32(bytes(head[:20]) + body))
    return bytes(head) + body


def test_unknown_records_kept_on_rewrite():
    newer = add_tlv(fi.build_image(CFG, 3), 0x0077, b"written by schema 2")
    newer = add_tlv(newer, 0x0123, b"")
    cfg = fi.parse_image(newer)
    assert cfg["schema"] == 2
    assert cfg["unknown"] == [(0x0077, b"written by schema 2"), (0x0123, b"")]
    cfg["channels"][0]["bandwidth_hz"] = 2500.0    # an older tool edits what it knows
    img = fi.build_image(cfg, 4)
    again = fi.parse_image(img)
    assert again["unknown"] == cfg["unknown"] and again["schema"] == 2
    assert again["channels"][0]["bandwidth_hz"] == 2500.0
    assert b"written by schema 2" in img


def test_unknown_critical_record_refused():
    img = add_tlv(fi.build_image(CFG, 3), 0x8077, b"must understand")
    with pytest.raises(fi.ImageError) as e:
        fi.parse_image(img)
    assert e.value.reason == "unknown_critical"


def test_every_single_bit_flip_and_truncation_detected():
    img = fi.build_image(CFG, 9)
    for k in range(len(img) * 8):
        bad = bytearray(img)
        bad[k >> 3] ^= 1 << (k & 7)
        with pytest.raises(fi.ImageError):
            fi.parse_image(bytes(bad))
    for n in range(len(img)):
        with pytest.raises(fi.ImageError) as e:
            fi.parse_image(img[:n])
        assert e.value.reason in ("truncated", "bad_length")
    with pytest.raises(fi.ImageError, match="bad_length"):
        fi.parse_image(img + b"\xff")


@pytest.mark.parametrize("cfg,reason", [
    ({"thresholds": {"x": math.nan}}, "non_finite"),
    ({"blades": {5: math.inf}}, "non_finite"),
    ({"channels": {64: {}}}, "bad_value"),
    ({"blades": {0: 1e-12}}, "bad_value"),
    ({"board": {"é": 1.0}}, "bad_value"),
    ({"board": {"x": "1"}}, "bad_value"),
    ({"unknown": [(fi.T_BLADE, b"")]}, "bad_value"),
])
def test_build_refuses(cfg, reason):
    with pytest.raises(fi.ImageError) as e:
        fi.build_image(cfg, 1)
    assert e.value.reason == reason


def forged(body: bytes, seq=1) -> bytes:
    head = struct.pack("<4sHHIII", b"ATBF", 1, 24, seq, len(body), 0)
    return head + zlib.crc32(head + body).to_bytes(4, "little") + body


@pytest.mark.parametrize("body,reason", [
    (struct.pack("<HH", 0x10, 0), "bad_tlv"),                              # channel without index
    (struct.pack("<HH", 0x10, 1) + b"\x40", "bad_tlv"),                    # channel 64
    (struct.pack("<HH", 0x20, 4) + bytes(4), "bad_tlv"),                   # short blade
    (struct.pack("<HH", 0x01, 20), "bad_tlv"),                             # overruns body
    (struct.pack("<H", 0x01), "bad_tlv"),                                  # half a TLV header
    (struct.pack("<HH", 0x01, 10) + b"\x01a" + struct.pack("<d", math.nan), "non_finite"),
    (2 * (struct.pack("<HH", 0x20, 16) + struct.pack("<Qd", 5, 0.0)), "duplicate"),
    (2 * (struct.pack("<HH", 0x10, 1) + b"\x03"), "duplicate"),
    (2 * struct.pack("<HH", 0x01, 0), "duplicate"),
])
def test_crc_valid_but_inconsistent_images_refused(body, reason):
    with pytest.raises(fi.ImageError) as e:
        fi.parse_image(forged(body))
    assert e.value.reason == reason


# ----------------------------------------------------------------------------- two-slot store

SLOT = 1024


def store_with(*cfgs):
    s = fi.TwoSlotStore(fi.FlashMedium(3 * SLOT), SLOT, base=SLOT // 2)
    for c in cfgs:
        s.save(c)
    return s


def test_alternating_slots_and_newest_wins():
    s = store_with()
    with pytest.raises(fi.ImageError) as e:
        s.read_active()
    assert e.value.reason == "empty"
    slots = [s.save({**CFG, "board": {"watchdog_s": 0.01 * k}}) for k in range(1, 6)]
    assert slots == [0, 1, 0, 1, 0]
    a = s.read_active()
    assert (a.slot, a.seq, a.config["board"]["watchdog_s"]) == (0, 5, 0.05)
    assert [r.state for r in a.reports] == ["valid", "valid"] and a.problems == []
    with pytest.raises(fi.ImageError, match="stale_seq"):
        s.write(fi.build_image(CFG, 5))
    with pytest.raises(fi.ImageError, match="too_large"):
        s.write(fi.build_image({"thresholds": {f"k{i}": 1.0 for i in range(100)}}, 6))
    with pytest.raises(fi.ImageError):
        s.write(fi.build_image(CFG, 6)[:-1])        # never writes an unreadable image
    assert s.read_active().seq == 5


def test_power_cut_at_every_byte_of_a_write():
    s0 = store_with(CFG, {**CFG, "thresholds": {"detect_power_dbm": -45.0}})   # seq 1 in A, 2 in B
    new = fi.build_image({**CFG, "blades": {42: 1e-12}}, 3)
    total = SLOT + len(new)                         # erase the target slot, then program
    states = set()
    for k in range(total + 1):
        m = s0.medium.copy()
        s = fi.TwoSlotStore(m, SLOT, base=SLOT // 2)
        m.power_budget = k
        try:
            s.write(new)
            cut = False
        except fi.PowerCut:
            cut = True
        m.power_budget = None
        after = fi.TwoSlotStore(m, SLOT, base=SLOT // 2)        # reboot
        a = after.read_active()
        if k < total:
            assert cut and a.seq == 2 and a.slot == 1, k   # previous image valid and active
            assert a.config["thresholds"] == {"detect_power_dbm": -45.0}
            rep = a.reports[0]
            states.add(rep.state)
            assert rep.state in ("valid", "corrupt", "incomplete", "empty"), rep
            if rep.state == "valid":
                assert rep.seq == 1                 # the cut hit only erased-already bytes
        else:
            assert not cut and a.seq == 3 and a.slot == 0 and a.config["blades"] == {42: 1e-12}
        # the surviving store accepts the next write
        if k in (0, SLOT // 3, SLOT + len(new) // 2):
            assert after.save(CFG) in (0, 1) and after.read_active().seq == 3
    assert {"corrupt", "incomplete", "empty"} <= states


def test_corrupt_slot_reported_not_hidden():
    s = store_with(CFG, CFG)                        # seq 1 in A, seq 2 in B
    off = s.slot_offset(1) + 40
    s.medium.data[off] ^= 0x10                      # bit rot in the newest image
    a = s.read_active()
    assert a.seq == 1 and a.slot == 0
    assert [(p.slot, p.state, p.reason) for p in a.problems] == [(1, "corrupt", "bad_crc")]
    s.medium.data[s.slot_offset(0) + 3] = 0x00      # and now the other one too
    with pytest.raises(fi.ImageError) as e:
        s.read_active()
    assert e.value.reason == "no_valid_image" and "bad_magic" in str(e.value) and "bad_crc" in str(e.value)
    # the next write goes to a slot and the store recovers
    s.save(CFG)
    assert s.read_active().seq == 1


def test_flash_medium_nor_semantics():
    m = fi.FlashMedium(8)
    m.program(0, b"\x0f\xf0")
    m.program(0, b"\xff\x0f")                       # programming only clears bits
    assert m.read(0, 3) == b"\x0f\x00\xff"
    m.erase(0, 2)
    assert m.read(0, 2) == b"\xff\xff"
    m.power_budget = 1
    with pytest.raises(fi.PowerCut):
        m.program(0, b"\x00\x00")
    assert m.read(0, 2) == b"\x00\xff"
    with pytest.raises(ValueError):
        m.read(7, 2)


# ----------------------------------------------------------------------------- TOML

GOOD = """
schema = 1
[board]
watchdog_s = 0.05
ramp_s = 2
[thresholds]
detect_power_dbm = -50.0
weak_return_dbm = -40.0
lock_window_fs = 0.3
unlock_window_fs = 0.6
[channel.0]
bandwidth_hz = 3000.0
notch_hz = 30e3
[channel.39]
enabled = 0
[blade."0x0123456789ABCDEF"]
oneway_offset_s = 1.25e-12
[blade."42"]
oneway_offset_s = -2e-15
"""


def test_toml_loads_and_goes_into_an_image(tmp_path):
    p = tmp_path / "bank.toml"
    p.write_text(GOOD)
    cfg = fi.load_toml(p)
    assert cfg["board"] == {"watchdog_s": 0.05, "ramp_s": 2.0}
    assert cfg["channels"] == {0: {"bandwidth_hz": 3000.0, "notch_hz": 30000.0}, 39: {"enabled": 0.0}}
    assert cfg["blades"] == {0x0123456789ABCDEF: 1.25e-12, 42: -2e-15}
    assert strip(fi.parse_image(fi.build_image(cfg, 1))) == norm(cfg)


@pytest.mark.parametrize("text,match", [
    ("[board]\nwatchdog_s = 100.0", r"board.watchdog_s = 100.0: out of range \[0.001, 10\] s"),
    ("[board]\nwatchdog_s = nan", "board.watchdog_s = nan: must be finite"),
    ("[thresholds]\nlock_window_fs = inf", "must be finite"),
    ("[board]\nramp_s = \"1\"", "must be a number .* got str"),
    ("[board]\nramp_s = true", "must be a number .* got bool"),
    ("[channel.3]\nbandwith_hz = 10.0", "channel.3.bandwith_hz: unknown setting"),
    ("[channel.64]\nenabled = 1", "channel index must be an integer 0..63"),
    ("[channel.x]\nenabled = 1", "channel index"),
    ("[channel.2]\nnotch_q = -1.0", r"channel.2.notch_q = -1.0: out of range"),
    ("[thresholds]\nlock_window_fs = 2.0\nunlock_window_fs = 1.0", "inverted range"),
    ("[thresholds]\nunlock_window_fs = 0.4\n[channel.1]\nlock_window_fs = 0.5", "channel.1: lock_window_fs"),
    ("[blade.\"0\"]\noneway_offset_s = 0.0", "serial outside"),
    ("[blade.\"zz\"]\noneway_offset_s = 0.0", "decimal or 0x-hex"),
    ("[blade.\"7\"]\n", "oneway_offset_s is required"),
    ("[blade.\"7\"]\noneway_offset_s = 0.5", "out of range"),
    ("[blade.\"7\"]\noneway_offset_s = 1e-12\n[blade.\"0x7\"]\noneway_offset_s = 1e-12", "given twice"),
    ("[blades]\nx = 1", "unknown top-level key"),
    ("schema = 2", "schema"),
    ("board = 5", "board: must be a table"),
    ("[board\nx=1", "TOML syntax"),
])
def test_toml_refusals(text, match):
    with pytest.raises(fi.ConfigError, match=match):
        fi.loads_toml(text)


def test_toml_error_names_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[board]\nhold_s = -1")
    with pytest.raises(fi.ConfigError, match="bad.toml: board.hold_s = -1"):
        fi.load_toml(p)


def test_defaults_inside_their_ranges():
    for table in (fi.BOARD_FIELDS, fi.THRESHOLD_FIELDS, fi.CHANNEL_FIELDS, fi.BLADE_FIELDS):
        for name, (lo, hi, default, unit, meaning) in table.items():
            assert lo <= default <= hi and unit and meaning, name
    d = fi.defaults()
    fi.validate_config({"board": d["board"], "thresholds": d["thresholds"]})


def test_protocol_doc_lists_every_setting_with_its_range():
    from pathlib import Path
    doc = Path(__file__).resolve().parent.parent.joinpath("docs", "protocol.md").read_text()
    doc = doc[doc.index("## 14. Configuration file"):doc.index("## 15.")]
    rows = {line.split("|")[1].strip(): line for line in doc.splitlines() if line.startswith("| ")}
    for table in (fi.BOARD_FIELDS, fi.THRESHOLD_FIELDS, fi.CHANNEL_FIELDS, fi.BLADE_FIELDS):
        for name, (lo, hi, default, unit, meaning) in table.items():
            assert name in rows, name
            assert meaning in rows[name] and f"| {unit} |" in rows[name], name
