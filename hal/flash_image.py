"""The configuration + calibration image, its two-slot flash store and the TOML loader.

Image layout (little-endian; docs/protocol.md "Flash image" has the byte table):

    0   4  magic     b"ATBF"
    4   2  schema    u16, highest schema version whose records the image may hold
    6   2  hdr_len   u16, 24 (a later schema may grow the header; readers skip to hdr_len)
    8   4  seq       u32, increases by one for every image written
    12  4  body_len  u32, bytes of TLV records after the header
    16  4  flags     u32, 0 (reserved)
    20  4  crc32     CRC-32/ISO-HDLC (zlib.crc32; check 0xCBF43926) over every image
                     byte except this field: bytes [0, 20) then [24, hdr_len + body_len)
    24  .  body      TLV records: type u16 | len u16 | value[len]

The CRC covers the header too: a flipped bit in `seq` must not make a stale
image look newest. TLV types with bit 15 set are critical: a reader that does
not know one refuses the image (ImageError "unknown_critical"); unknown
non-critical records are kept byte for byte when the image is rewritten, so an
older tool never deletes what a newer one stored.

Record types of schema 1 (a "named floats" value is repeated
name_len u8 | name ASCII | value f64):
    0x0001 THRESHOLDS  named floats (bank-wide thresholds)
    0x0002 BOARD       named floats (board settings: watchdog, hold, ramp)
    0x0010 CHANNEL     ch u8 | named floats          (one record per channel)
    0x0020 BLADE       serial u64 | oneway_offset_s f64 (one record per blade)

Two-slot store: slot A and slot B of a fixed size on a NOR-like medium
(erase sets 0xFF, programming only clears bits). A write goes to the slot NOT
holding the newest valid image: erase it, program the body, then the header
with the magic last. The previous image is never touched, so a power cut at
any byte leaves it valid and active; the interrupted slot reads as
"incomplete" or "corrupt" and is reported. Reading returns the valid image
with the highest seq and the state of both slots; with no valid image it
raises ImageError, it never falls back to defaults.
"""
from __future__ import annotations

import math
import struct
import tomllib
import zlib
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"ATBF"
SCHEMA = 1
HEADER = struct.Struct("<4sHHIIII")      # magic, schema, hdr_len, seq, body_len, flags, crc32
HEADER_LEN = HEADER.size                 # 24
CRC_OFFSET = 20
SEQ_MAX = (1 << 32) - 1
TLV = struct.Struct("<HH")
TLV_MAX = 0xFFFF
CRITICAL = 0x8000

T_THRESHOLDS = 0x0001
T_BOARD = 0x0002
T_CHANNEL = 0x0010
T_BLADE = 0x0020
KNOWN = {T_THRESHOLDS, T_BOARD, T_CHANNEL, T_BLADE}
MAX_CHANNELS = 64
SLOT_SIZE_DEFAULT = 4096

_F64 = struct.Struct("<d")
_CH = struct.Struct("<B")
_BLADE = struct.Struct("<Qd")

IMAGE_REASONS = ("empty", "incomplete", "truncated", "bad_magic", "bad_header", "bad_length",
                 "bad_crc", "bad_tlv", "duplicate", "non_finite", "unknown_critical",
                 "bad_value", "too_large", "stale_seq", "no_valid_image", "verify")


class ImageError(ValueError):
    """A corrupt, incomplete or unusable image. `reason` is one of IMAGE_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ConfigError(ValueError):
    """A configuration (TOML file or dict) that violates the schema; the message names
    the offending key as a dotted path, its value and the allowed range."""


# ----------------------------------------------------------------------------- TLV codec

def _pack_named(d: dict, where: str) -> bytes:
    out = bytearray()
    for name in sorted(d):
        v = d[name]
        if not isinstance(name, str) or not name.isascii() or not 1 <= len(name) <= 255:
            raise ImageError("bad_value", f"{where}: name {name!r} must be 1..255 ASCII chars")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ImageError("bad_value", f"{where}.{name}: {v!r} is not a number")
        if not math.isfinite(v):
            raise ImageError("non_finite", f"{where}.{name} = {v}")
        nb = name.encode()
        out += bytes((len(nb),)) + nb + _F64.pack(float(v))
    return bytes(out)


def _unpack_named(v: bytes, where: str) -> dict:
    d = {}
    k = 0
    while k < len(v):
        n = v[k]
        if n == 0 or k + 1 + n + 8 > len(v):
            raise ImageError("bad_tlv", f"{where}: named value overruns its record")
        try:
            name = v[k + 1:k + 1 + n].decode("ascii")
        except UnicodeDecodeError:
            raise ImageError("bad_tlv", f"{where}: non-ASCII name") from None
        (x,) = _F64.unpack_from(v, k + 1 + n)
        if name in d:
            raise ImageError("duplicate", f"{where}.{name}")
        if not math.isfinite(x):
            raise ImageError("non_finite", f"{where}.{name} = {x}")
        d[name] = x
        k += 1 + n + 8
    return d


def _tlv(t: int, value: bytes) -> bytes:
    if len(value) > TLV_MAX:
        raise ImageError("too_large", f"record 0x{t:04X} of {len(value)} bytes")
    return TLV.pack(t, len(value)) + value


def build_image(cfg: dict, seq: int) -> bytes:
    """Config dict -> image bytes with sequence number seq (1..2^32-1).

    cfg keys (all optional): "thresholds" {name: float}, "board" {name: float},
    "channels" {ch 0..63: {name: float}}, "blades" {serial u64: oneway offset s},
    "unknown" [(type, value bytes)] (kept from a parsed image), "schema" (the
    image keeps the higher of it and SCHEMA). Values must be finite numbers.
    Ranges are the business of validate_config (the TOML loader calls it).
    """
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= SEQ_MAX:
        raise ImageError("bad_value", f"seq must be an integer in 1..2^32-1, got {seq!r}")
    body = bytearray()
    for t, key in ((T_THRESHOLDS, "thresholds"), (T_BOARD, "board")):
        if cfg.get(key):
            body += _tlv(t, _pack_named(cfg[key], key))
    for ch in sorted(cfg.get("channels", {})):
        if isinstance(ch, bool) or not isinstance(ch, int) or not 0 <= ch < MAX_CHANNELS:
            raise ImageError("bad_value", f"channel index {ch!r} outside 0..{MAX_CHANNELS - 1}")
        body += _tlv(T_CHANNEL, _CH.pack(ch) + _pack_named(cfg["channels"][ch], f"channel.{ch}"))
    for serial in sorted(cfg.get("blades", {})):
        off = cfg["blades"][serial]
        if isinstance(serial, bool) or not isinstance(serial, int) or not 0 < serial < 1 << 64:
            raise ImageError("bad_value", f"blade serial {serial!r} outside 1..2^64-1")
        if isinstance(off, bool) or not isinstance(off, (int, float)) or not math.isfinite(off):
            raise ImageError("non_finite", f"blade.{serial}.oneway_offset_s = {off!r}")
        body += _tlv(T_BLADE, _BLADE.pack(serial, float(off)))
    for t, value in cfg.get("unknown", ()):
        if t in KNOWN or not 0 <= t <= 0xFFFF:
            raise ImageError("bad_value", f"unknown record type 0x{t:04X} is not unknown")
        body += _tlv(t, bytes(value))
    schema = max(SCHEMA, int(cfg.get("schema", SCHEMA)))
    head = HEADER.pack(MAGIC, schema, HEADER_LEN, seq, len(body), 0, 0)
    crc = zlib.crc32(body, zlib.crc32(head[:CRC_OFFSET]))
    return head[:CRC_OFFSET] + crc.to_bytes(4, "little") + bytes(body)


def image_length(buf) -> int:
    """Total length (header + body) stated by an image header; raises ImageError."""
    return _check_header(bytes(buf[:HEADER_LEN]), len(buf))[2]


def _check_header(head: bytes, avail: int):
    if len(head) < HEADER_LEN:
        raise ImageError("truncated", f"{len(head)} bytes < {HEADER_LEN}-byte header")
    if head == b"\xff" * HEADER_LEN:
        raise ImageError("empty", "erased header")
    magic, schema, hdr_len, seq, body_len, flags, crc = HEADER.unpack(head)
    if magic != MAGIC:
        raise ImageError("bad_magic", f"{magic!r}")
    if hdr_len < HEADER_LEN or schema == 0:
        raise ImageError("bad_header", f"schema {schema}, header length {hdr_len}")
    total = hdr_len + body_len
    if total > avail:
        raise ImageError("truncated", f"image of {total} bytes, {avail} available")
    return seq, hdr_len, total


def parse_image(buf, strict: bool = True) -> dict:
    """Image bytes -> config dict (build_image's keys plus "seq" and "schema").

    strict: the buffer must be exactly the image (False: trailing bytes, e.g. the
    rest of a flash slot, are ignored). Raises ImageError on any corruption.
    """
    buf = bytes(buf)
    seq, hdr_len, total = _check_header(buf[:HEADER_LEN], len(buf))
    if strict and total != len(buf):
        raise ImageError("bad_length", f"{len(buf)} bytes, header says {total}")
    (crc,) = struct.unpack_from("<I", buf, CRC_OFFSET)
    calc = zlib.crc32(buf[HEADER_LEN:total], zlib.crc32(buf[:CRC_OFFSET]))
    if crc != calc:
        raise ImageError("bad_crc", f"stored 0x{crc:08X}, computed 0x{calc:08X}")
    (schema,) = struct.unpack_from("<H", buf, 4)
    cfg = {"schema": schema, "seq": seq, "thresholds": {}, "board": {}, "channels": {},
           "blades": {}, "unknown": []}
    k = hdr_len
    seen = set()
    while k < total:
        if k + TLV.size > total:
            raise ImageError("bad_tlv", f"record header at {k} overruns the body")
        t, n = TLV.unpack_from(buf, k)
        v = buf[k + TLV.size:k + TLV.size + n]
        if k + TLV.size + n > total:
            raise ImageError("bad_tlv", f"record 0x{t:04X} at {k} overruns the body")
        if t in (T_THRESHOLDS, T_BOARD):
            key = "thresholds" if t == T_THRESHOLDS else "board"
            if key in seen:
                raise ImageError("duplicate", key)
            seen.add(key)
            cfg[key] = _unpack_named(v, key)
        elif t == T_CHANNEL:
            if n < 1 or v[0] >= MAX_CHANNELS:
                raise ImageError("bad_tlv", "channel record without a valid channel index")
            if v[0] in cfg["channels"]:
                raise ImageError("duplicate", f"channel {v[0]}")
            cfg["channels"][v[0]] = _unpack_named(v[1:], f"channel.{v[0]}")
        elif t == T_BLADE:
            if n != _BLADE.size:
                raise ImageError("bad_tlv", f"blade record of {n} bytes")
            serial, off = _BLADE.unpack(v)
            if serial == 0 or serial in cfg["blades"]:
                raise ImageError("duplicate" if serial else "bad_tlv", f"blade serial {serial}")
            if not math.isfinite(off):
                raise ImageError("non_finite", f"blade.{serial}.oneway_offset_s = {off}")
            cfg["blades"][serial] = off
        elif t & CRITICAL:
            raise ImageError("unknown_critical", f"record type 0x{t:04X} (schema {schema})")
        else:
            cfg["unknown"].append((t, v))
        k += TLV.size + n
    return cfg


# ----------------------------------------------------------------------------- two-slot store

class PowerCut(Exception):
    """Raised by FlashMedium when its simulated power budget runs out."""


class FlashMedium:
    """Byte-addressable NOR-like flash in a bytearray (erased state 0xFF).

    erase(off, n) sets bytes to 0xFF; program(off, data) can only clear bits
    (byte = old & new), as real NOR does. `power_budget`: None, or the number of
    byte operations (erase or program, one per byte) still allowed; the operation
    that would exceed it stops after exactly that many bytes and raises PowerCut.
    """

    def __init__(self, size: int, data=None):
        self.data = bytearray(b"\xff" * size) if data is None else bytearray(data)
        self.power_budget = None

    def __len__(self):
        return len(self.data)

    def copy(self) -> "FlashMedium":
        return FlashMedium(len(self.data), self.data)

    def read(self, off: int, n: int) -> bytes:
        self._bounds(off, n)
        return bytes(self.data[off:off + n])

    def _bounds(self, off, n):
        if off < 0 or n < 0 or off + n > len(self.data):
            raise ValueError(f"flash access [{off}, {off + n}) outside [0, {len(self.data)})")

    def _allow(self, n: int) -> int:
        if self.power_budget is None:
            return n
        k = min(n, self.power_budget)
        self.power_budget -= k
        return k

    def erase(self, off: int, n: int) -> None:
        self._bounds(off, n)
        k = self._allow(n)
        self.data[off:off + k] = b"\xff" * k
        if k < n:
            raise PowerCut(f"power cut during erase after {k} of {n} bytes")

    def program(self, off: int, data: bytes) -> None:
        n = len(data)
        self._bounds(off, n)
        k = self._allow(n)
        old = int.from_bytes(self.data[off:off + k], "little")
        self.data[off:off + k] = (old & int.from_bytes(data[:k], "little")).to_bytes(k, "little")
        if k < n:
            raise PowerCut(f"power cut during program after {k} of {n} bytes")


@dataclass
class SlotReport:
    """State of one slot: "valid" (seq set), "empty" (erased), "incomplete" (erased
    header, data behind it: an interrupted write) or "corrupt" (reason, detail)."""
    slot: int
    state: str
    seq: int | None = None
    reason: str = ""
    detail: str = ""


@dataclass
class ActiveImage:
    """The newest valid image: its slot, seq, parsed config, raw bytes, and the
    reports of both slots (a corrupt other slot is listed in `problems`)."""
    slot: int
    seq: int
    config: dict
    image: bytes
    reports: list = field(default_factory=list)

    @property
    def problems(self) -> list:
        return [r for r in self.reports if r.state in ("corrupt", "incomplete")]


def _uncommitted(head4: bytes) -> bool:
    """Magic erased, or cut while being programmed (a proper prefix of MAGIC, then 0xFF):
    the write never committed."""
    k = 0
    while k < 4 and head4[k] == MAGIC[k]:
        k += 1
    return k < 4 and head4[k:] == b"\xff" * (4 - k)


class TwoSlotStore:
    """Two fixed-size slots (A = 0 at `base`, B = 1 at base + slot_size) on a FlashMedium."""

    def __init__(self, medium: FlashMedium, slot_size: int = SLOT_SIZE_DEFAULT, base: int = 0):
        if slot_size < HEADER_LEN or base < 0 or base + 2 * slot_size > len(medium):
            raise ValueError(f"two slots of {slot_size} bytes at {base} do not fit a "
                             f"{len(medium)}-byte medium")
        self.medium = medium
        self.slot_size = slot_size
        self.base = base

    def slot_offset(self, slot: int) -> int:
        if slot not in (0, 1):
            raise ValueError(f"slot must be 0 or 1, got {slot}")
        return self.base + slot * self.slot_size

    def read_slot(self, slot: int) -> bytes:
        return self.medium.read(self.slot_offset(slot), self.slot_size)

    def _examine(self, slot: int):
        raw = self.read_slot(slot)
        try:
            cfg = parse_image(raw, strict=False)
        except ImageError as e:
            if e.reason == "empty" and raw.count(0xFF) == len(raw):
                return SlotReport(slot, "empty"), None, None
            if _uncommitted(raw[:4]):              # magic is programmed last: not committed
                return SlotReport(slot, "incomplete", None, "incomplete",
                                  "no magic, data behind it (interrupted write)"), None, None
            return SlotReport(slot, "corrupt", None, e.reason, e.detail), None, None
        total = image_length(raw)
        return SlotReport(slot, "valid", cfg["seq"]), cfg, raw[:total]

    def scan(self) -> list:
        """SlotReport of slot 0 and slot 1."""
        return [self._examine(s)[0] for s in (0, 1)]

    def read_active(self) -> ActiveImage:
        """The valid image with the highest seq; ImageError("empty") if both slots are
        erased, ImageError("no_valid_image") if neither holds a valid image."""
        found = [self._examine(s) for s in (0, 1)]
        reports = [f[0] for f in found]
        valid = [f for f in found if f[0].state == "valid"]
        if not valid:
            if all(r.state == "empty" for r in reports):
                raise ImageError("empty", "both slots erased: no image written yet")
            raise ImageError("no_valid_image", "; ".join(
                f"slot {r.slot}: {r.state} {r.reason} {r.detail}".strip() for r in reports))
        rep, cfg, raw = max(valid, key=lambda f: f[0].seq)
        return ActiveImage(rep.slot, rep.seq, cfg, raw, reports)

    def write(self, image: bytes) -> int:
        """Write a complete image to the slot not holding the newest valid image; returns
        that slot. The image must parse and its seq must exceed the newest valid one."""
        image = bytes(image)
        cfg = parse_image(image)                  # never write something unreadable
        if len(image) > self.slot_size:
            raise ImageError("too_large", f"image {len(image)} bytes > slot {self.slot_size}")
        found = [self._examine(s)[0] for s in (0, 1)]
        valid = [r for r in found if r.state == "valid"]
        if valid:
            newest = max(valid, key=lambda r: r.seq)
            if cfg["seq"] <= newest.seq:
                raise ImageError("stale_seq", f"seq {cfg['seq']} <= newest {newest.seq}")
            target = 1 - newest.slot
        else:                                     # keep a corrupt slot as evidence if possible
            target = next((r.slot for r in found if r.state == "empty"), 0)
        off = self.slot_offset(target)
        m = self.medium
        m.erase(off, self.slot_size)
        m.program(off + HEADER_LEN, image[HEADER_LEN:])    # body
        m.program(off + 4, image[4:HEADER_LEN])            # header fields
        m.program(off, image[:4])                          # magic last: the commit
        if m.read(off, len(image)) != image:
            raise ImageError("verify", f"slot {target} reads back different bytes")
        return target

    def save(self, cfg: dict) -> int:
        """Build an image of cfg with the next seq (newest valid + 1) and write it."""
        reports = [r for r in self.scan() if r.state == "valid"]
        seq = max((r.seq for r in reports), default=0) + 1
        return self.write(build_image(cfg, seq))


# ----------------------------------------------------------------------------- TOML loader

# name: (min, max, default, unit, meaning). Ranges are inclusive.
BOARD_FIELDS = {
    "watchdog_s": (0.001, 10.0, 0.05, "s", "host silence before the board holds actuators"),
    "hold_s": (0.0, 60.0, 0.2, "s", "time actuators are held before the ramp starts"),
    "ramp_s": (0.0, 60.0, 1.0, "s", "linear ramp time to the safe preset (0 = step)"),
    "status_period_s": (0.0, 60.0, 0.1, "s", "periodic STATUS frames (0 = on request only)"),
}
THRESHOLD_FIELDS = {
    "detect_power_dbm": (-90.0, 10.0, -50.0, "dBm", "return power that detects a blade"),
    "detect_debounce_s": (0.0, 10.0, 0.01, "s", "time above detect_power_dbm before DETECTED"),
    "weak_return_dbm": (-90.0, 10.0, -40.0, "dBm", "return power below which WEAK_RETURN is raised"),
    "lock_window_fs": (0.001, 1000.0, 0.5, "fs", "one-way phase error counted toward LOCKED"),
    "unlock_window_fs": (0.001, 1000.0, 1.0, "fs", "one-way phase error counted toward loss of lock"),
    "lock_debounce_s": (0.0, 10.0, 0.05, "s", "time inside the lock window before LOCKED"),
    "holdover_max_s": (0.0, 60.0, 0.1, "s", "longest return loss bridged in HOLDOVER"),
    "nonreciprocity_fs": (0.001, 1.0e6, 10.0, "fs", "asymmetry step that raises NONRECIPROCITY"),
    "pzt_sat_frac": (0.5, 1.0, 0.95, "1", "PZT code fraction of full range that raises PZT_SAT"),
    "spool_sat_frac": (0.5, 1.0, 0.95, "1", "spool code fraction of full range that raises SPOOL_SAT"),
}
CHANNEL_FIELDS = {
    "enabled": (0.0, 1.0, 1.0, "1", "0 = channel kept EMPTY whatever the return power"),
    "bandwidth_hz": (1.0, 20_000.0, 3000.0, "Hz", "servo unity-gain frequency"),
    "integrator_zero_hz": (0.1, 20_000.0, 3000.0, "Hz", "zero frequency of the integrator stages"),
    "notch_hz": (100.0, 50_000.0, 30_000.0, "Hz", "PZT resonance notch centre"),
    "notch_q": (0.1, 100.0, 1.0, "1", "notch quality factor"),
    "rolloff_hz": (100.0, 50_000.0, 20_000.0, "Hz", "low-pass roll-off corner"),
    "pzt_range_fs": (1.0, 1.0e5, 2000.0, "fs", "PZT one-way range, +- around mid-scale"),
    "spool_range_fs": (1.0, 1.0e7, 50_000.0, "fs", "spool one-way range, +- around mid-scale"),
    "offload_tau_s": (0.01, 1.0e4, 10.0, "s", "time constant of the PZT-to-spool offload"),
    "safe_pzt_frac": (0.0, 1.0, 0.5, "1", "safe-state PZT code as a fraction of full scale"),
    "safe_spool_frac": (0.0, 1.0, 0.5, "1", "safe-state spool code as a fraction of full scale"),
    **THRESHOLD_FIELDS,                   # per-channel overrides of the bank thresholds
}
BLADE_FIELDS = {
    "oneway_offset_s": (-1.0e-3, 1.0e-3, 0.0, "s", "stored one-way delay offset of this blade"),
}
_TOP_KEYS = ("schema", "board", "thresholds", "channel", "blade")


def _number(path: str, v, spec) -> float:
    lo, hi, _, unit, _ = spec
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{path} = {v!r}: must be a number ({unit}), got {type(v).__name__}")
    x = float(v)
    if not math.isfinite(x):
        raise ConfigError(f"{path} = {v}: must be finite")
    if not lo <= x <= hi:
        raise ConfigError(f"{path} = {v}: out of range [{lo:g}, {hi:g}] {unit}")
    return x


def _table(path: str, t, specs: dict) -> dict:
    if not isinstance(t, dict):
        raise ConfigError(f"{path}: must be a table, got {type(t).__name__}")
    out = {}
    for k, v in t.items():
        if k not in specs:
            raise ConfigError(f"{path}.{k}: unknown setting; known: {', '.join(sorted(specs))}")
        out[k] = _number(f"{path}.{k}", v, specs[k])
    return out


def _hysteresis(path: str, d: dict, merged: dict) -> None:
    # Inverted ranges are refused: the detectors rely on lo < hi for hysteresis.
    for lo_k, hi_k in (("lock_window_fs", "unlock_window_fs"),
                       ("detect_power_dbm", "weak_return_dbm")):
        if lo_k in merged and hi_k in merged and not merged[lo_k] < merged[hi_k]:
            raise ConfigError(f"{path}: {lo_k} = {merged[lo_k]} must be below "
                              f"{hi_k} = {merged[hi_k]} (inverted range)")


def parse_serial(key) -> int:
    """Blade serial from a TOML key: decimal ("1234") or hex ("0x04D2"), 1..2^64-1."""
    if isinstance(key, int) and not isinstance(key, bool):
        s = key
    else:
        try:
            s = int(str(key), 0)
        except ValueError:
            raise ConfigError(f"blade.{key!r}: serial must be decimal or 0x-hex") from None
    if not 0 < s < 1 << 64:
        raise ConfigError(f"blade.{key}: serial outside 1..2^64-1")
    return s


def validate_config(cfg: dict) -> dict:
    """Check a TOML-shaped dict (keys: schema, board, thresholds, channel, blade) and
    return the image-shaped dict (schema, board, thresholds, channels, blades, unknown).
    Raises ConfigError naming the first offending key."""
    if not isinstance(cfg, dict):
        raise ConfigError("configuration must be a table")
    for k in cfg:
        if k not in _TOP_KEYS:
            raise ConfigError(f"{k}: unknown top-level key; known: {', '.join(_TOP_KEYS)}")
    schema = cfg.get("schema", SCHEMA)
    if isinstance(schema, bool) or not isinstance(schema, int) or not 1 <= schema <= SCHEMA:
        raise ConfigError(f"schema = {schema!r}: this tool reads schema 1..{SCHEMA}")
    out = {"schema": schema, "board": _table("board", cfg.get("board", {}), BOARD_FIELDS),
           "thresholds": _table("thresholds", cfg.get("thresholds", {}), THRESHOLD_FIELDS),
           "channels": {}, "blades": {}, "unknown": []}
    _hysteresis("thresholds", out["thresholds"], out["thresholds"])
    chans = cfg.get("channel", {})
    if not isinstance(chans, dict):
        raise ConfigError("channel: must be a table of [channel.N] tables")
    for key, t in chans.items():
        try:
            ch = int(key)
        except ValueError:
            ch = -1
        if not (str(key).isdigit() and 0 <= ch < MAX_CHANNELS):
            raise ConfigError(f"channel.{key}: channel index must be an integer 0..{MAX_CHANNELS - 1}")
        if ch in out["channels"]:
            raise ConfigError(f"channel.{key}: channel {ch} given twice")
        d = _table(f"channel.{key}", t, CHANNEL_FIELDS)
        _hysteresis(f"channel.{key}", d, {**out["thresholds"], **d})
        out["channels"][ch] = d
    blades = cfg.get("blade", {})
    if not isinstance(blades, dict):
        raise ConfigError('blade: must be a table of [blade."SERIAL"] tables')
    for key, t in blades.items():
        s = parse_serial(key)
        d = _table(f"blade.{key}", t, BLADE_FIELDS)
        if "oneway_offset_s" not in d:
            raise ConfigError(f"blade.{key}: oneway_offset_s is required")
        if s in out["blades"]:
            raise ConfigError(f"blade.{key}: serial {s} given twice")
        out["blades"][s] = d["oneway_offset_s"]
    return out


def loads_toml(text: str) -> dict:
    """TOML text -> validated image-shaped config dict (see validate_config)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"TOML syntax: {e}") from None
    return validate_config(raw)


def load_toml(path) -> dict:
    """TOML file -> validated config dict; errors name the file."""
    path = Path(path)
    try:
        return loads_toml(path.read_text())
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def defaults() -> dict:
    """The documented default of every board and threshold setting (physical units)."""
    return {"board": {k: v[2] for k, v in BOARD_FIELDS.items()},
            "thresholds": {k: v[2] for k, v in THRESHOLD_FIELDS.items()}}
