"""attobus wire protocol: message layouts, frame encoders and the streaming Decoder.

A frame on the wire is

    COBS( header[8] | payload[len] | crc16[2] ) | 0x00

    header = version u8 | type u8 | seq u32 | len u16        (little-endian)
    crc16  = CRC-16/IBM-SDLC (hal.crc16) over header | payload, low byte first

Every multi-byte field is little-endian. `seq` counts every frame a sender
emits (one counter per direction), wraps modulo 2^32 and lets the receiver
count lost, duplicated and reordered frames exactly. The full specification,
with byte tables of every message, is docs/protocol.md; this module is its
reference implementation.

Hot path: the 40-channel ADC (board -> host) and DAC (host -> board) frames
are sent every tick. `Encoder.adc` / `Encoder.dac` build them in one numba
kernel (payload packing, CRC-16 and COBS into preallocated buffers, no
per-channel Python); `Decoder.feed` finds frames with bytes.find, undoes COBS
and checks the CRC in one numba kernel, and hands out the per-channel fields
as numpy views. The generic path (`encode_frame` + `pack_*`, crcmod +
hal.cobs) is the reference the fast path is tested against.

Errors: bad input on the receive side is counted in `Decoder.stats`, never
raised out of `feed()`. Misuse of the API (wrong types, out-of-range fields
when encoding) raises `WireUsageError`. `unpack_*` functions called directly
on a bad payload raise `WireFormatError`.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field, fields

import numba
import numpy as np

from hal import auth, cobs
from hal.crc16 import INIT as _CRC_INIT, XOROUT as _CRC_XOROUT, crc16, crc16_update

PROTOCOL_VERSION = 1
HEADER = struct.Struct("<BBIH")            # version, type, seq, payload length
HEADER_LEN = HEADER.size                    # 8
CRC_LEN = 2
SEQ_MOD = 1 << 32
MAX_CHANNELS = 64                           # channel masks are u64
MAX_PAYLOAD = 1024                          # bytes; every defined message fits (largest: CONFIG, 64 ch, 612)
MAX_FRAME = HEADER_LEN + MAX_PAYLOAD + CRC_LEN            # decoded bytes, 1034
MAX_WIRE = cobs.max_encoded_len(MAX_FRAME) + 1            # wire bytes incl. the 0x00, 1040
FLASH_CHUNK_MAX = 512                       # data bytes per FLASH_READ/FLASH_DATA/FLASH_WRITE
MAX_EVENTS = 8                              # blade events per ADC frame

PZT_BITS = 20                               # PZT DAC code, offset binary 0..2^20-1
SPOOL_BITS = 16                             # spool DAC code, offset binary 0..2^16-1
DDS_BITS = 32                               # AOM DDS frequency-tuning-word offset, int32
ADC_BITS = 16                               # I/Q samples, int16
PZT_MID = 1 << (PZT_BITS - 1)
SPOOL_MID = 1 << (SPOOL_BITS - 1)

# Watchdog / safe-state defaults (CONFIG fields; docs/protocol.md "Watchdog").
WATCHDOG_MS_DEFAULT = 50                    # host silence before the board holds actuators
HOLD_MS_DEFAULT = 200                       # hold time before the ramp starts
RAMP_MS_DEFAULT = 1000                      # linear ramp to the safe preset
STATUS_PERIOD_MS_DEFAULT = 100
STREAM_DIVIDER_DEFAULT = 1


class WireUsageError(ValueError):
    """API misuse: wrong argument types, out-of-range fields when encoding."""


class WireFormatError(ValueError):
    """A payload that does not follow its message layout (raised by unpack_*)."""


class MsgType(enum.IntEnum):
    HELLO = 0x01               # host -> board: start of a session
    CAPS = 0x02                # board -> host: reply to HELLO
    HEARTBEAT = 0x03           # both: keep-alive (feeds the board watchdog)
    STATUS = 0x04              # board -> host: counters; host -> board: empty = request
    ACK = 0x05                 # board -> host: command applied
    NACK = 0x06                # board -> host: frame refused, with a reason
    PING = 0x07                # host -> board: loop-latency probe (answered at once)
    PONG = 0x08                # board -> host: reply to PING, with the loop latency seen by the board
    ADC = 0x10                 # board -> host, every tick
    DAC = 0x11                 # host -> board, every tick
    CONFIG = 0x20              # host -> board, authenticated
    ACTUATOR_OVERRIDE = 0x21   # host -> board, authenticated
    FLASH_READ = 0x30          # host -> board: read request
    FLASH_DATA = 0x31          # board -> host: read reply
    FLASH_WRITE = 0x32         # host -> board, authenticated


AUTHENTICATED = frozenset({MsgType.CONFIG, MsgType.ACTUATOR_OVERRIDE, MsgType.FLASH_WRITE})
_KNOWN_TYPES = frozenset(int(t) for t in MsgType)


class NackReason(enum.IntEnum):
    BAD_VERSION = 1            # detail = the board's protocol version
    UNKNOWN_TYPE = 2           # detail = the type byte
    MALFORMED = 3              # payload does not follow its layout
    AUTH_TRUNCATED = 4
    AUTH_UNKNOWN_KEY = 5       # detail = key id
    AUTH_BAD_TAG = 6
    AUTH_REPLAY = 7            # detail = low 32 bits of the last accepted counter
    RANGE = 8                  # a field out of range; detail = field index
    BUSY = 9
    NOT_ARMED = 10             # DAC frame while in the safe state: send HELLO first
    FLASH_OFFSET = 11          # FLASH_WRITE chunk not at the expected offset
    FLASH_VERIFY = 12          # written image failed its check; previous image stays active
    FLASH_SLOT = 13            # FLASH_READ of a slot that does not exist
    TOO_LARGE = 14
    CHANNELS = 15              # channel count differs from CAPS n_channels


AUTH_NACK = {"truncated": NackReason.AUTH_TRUNCATED, "unknown_key": NackReason.AUTH_UNKNOWN_KEY,
             "bad_tag": NackReason.AUTH_BAD_TAG, "replay": NackReason.AUTH_REPLAY,
             "store": NackReason.BUSY}


class BoardFlags(enum.IntFlag):
    WATCHDOG_HOLD = 1 << 0     # host silent: actuators held
    WATCHDOG_RAMP = 1 << 1     # ramping to the safe preset
    SAFE = 1 << 2              # at the safe preset; DAC frames refused until HELLO
    OVERRIDE = 1 << 3          # an ACTUATOR_OVERRIDE is forcing some channels
    DAC_LATE = 1 << 4          # the DAC frame applied this tick was late or missing
    RX_ERROR = 1 << 5          # the board counted a receive error since the last ADC frame
    CONFIG_CHANGED = 1 << 6    # a CONFIG was applied since the last ADC frame
    FLASH_BUSY = 1 << 7        # a flash write is in progress
    EVENT_OVERFLOW = 1 << 8    # blade events were dropped: read STATUS
    FLASH_FAULT = 1 << 9       # no valid flash image, or a corrupt/incomplete slot: read it


class WatchdogState(enum.IntEnum):
    RUN = 0
    HOLD = 1
    RAMP = 2
    SAFE = 3


class BladeEventKind(enum.IntEnum):
    INSERTED = 1
    REMOVED = 2


class OverrideMode(enum.IntEnum):
    RELEASE = 0                # channels in mask go back to the DAC stream
    FORCE = 1                  # channels in mask output the given codes until released


# ----------------------------------------------------------------------------- helpers

def _check_int(name, v, lo, hi):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise WireUsageError(f"{name} must be an integer, got {type(v).__name__}")
    v = int(v)
    if not lo <= v <= hi:
        raise WireUsageError(f"{name}={v} out of range [{lo}, {hi}]")
    return v


def _int_array(name, a, lo, hi, n=None):
    a = np.asarray(a)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise WireUsageError(f"{name} must be a 1-D integer array, got {a.dtype} shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise WireUsageError(f"{name} has {a.shape[0]} channels, expected {n}")
    if a.size:
        bad = np.flatnonzero((a < lo) | (a > hi))
        if bad.size:
            c = int(bad[0])
            raise WireUsageError(f"{name}[{c}]={int(a[c])} out of range [{lo}, {hi}]")
    return a


def _need(cond, what):
    if not cond:
        raise WireFormatError(what)


def _pack_u24(a: np.ndarray) -> bytes:
    return a.astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()


@numba.njit(cache=True, nogil=True)
def _u24_kernel(src, off, n, out):
    """out[c] = little-endian u24 at src[off + 3c]; returns False if any is above 20 bits."""
    ok = True
    for c in range(n):
        k = off + 3 * c
        v = np.uint32(src[k]) | (np.uint32(src[k + 1]) << 8) | (np.uint32(src[k + 2]) << 16)
        ok &= (v >> 20) == 0                    # 20-bit PZT code in a 24-bit field
        out[c] = v
    return ok


def _unpack_u24(p, off, n) -> np.ndarray:
    out = np.empty(n, np.uint32)
    _need(_u24_kernel(np.frombuffer(p, np.uint8), off, n, out), "pzt code above 20 bits")
    return out


def _codes_pack(pzt, spool, dds) -> bytes:
    return _pack_u24(pzt) + spool.astype("<u2").tobytes() + dds.astype("<i4").tobytes()


def _codes_unpack(p, off, n):
    _need(len(p) - off == 9 * n, f"codes: {len(p) - off} bytes for {n} channels, expected {9 * n}")
    pzt = _unpack_u24(p, off, n)
    spool = np.frombuffer(p, "<u2", n, off + 3 * n)
    dds = np.frombuffer(p, "<i4", n, off + 5 * n)
    return pzt, spool, dds


def _codes_check(n, pzt, spool, dds):
    pzt = _int_array("pzt", pzt, 0, (1 << PZT_BITS) - 1, n)
    spool = _int_array("spool", spool, 0, (1 << SPOOL_BITS) - 1, n)
    dds = _int_array("dds", dds, -(1 << 31), (1 << 31) - 1, n)
    return pzt, spool, dds


# ----------------------------------------------------------------------------- messages
# Each message: a dataclass with TYPE, pack() -> payload bytes, unpack(payload) -> instance.

class BladeEvent(tuple):
    """(ch, kind, serial): blade inserted/removed on channel ch; serial u64 (0 if unknown)."""
    __slots__ = ()

    def __new__(cls, ch, kind, serial):
        return tuple.__new__(cls, (int(ch), int(kind), int(serial)))

    ch = property(lambda s: s[0])
    kind = property(lambda s: s[1])
    serial = property(lambda s: s[2])


_ADC_HEAD = struct.Struct("<IHBBQQ")        # tick, board_flags, nch, nev, overrange, presence
_EVENT = struct.Struct("<BBQ")


@dataclass(eq=False)
class AdcFrame:
    """Board -> host, every tick. i, q: int16[nch] I/Q samples of tick `tick` (u32, wraps).

    board_flags: BoardFlags. overrange, presence: u64 channel bitmasks.
    events: up to MAX_EVENTS BladeEvent. Decoded arrays are read-only views.
    """
    TYPE = MsgType.ADC
    tick: int
    i: np.ndarray
    q: np.ndarray
    board_flags: int = 0
    overrange: int = 0
    presence: int = 0
    events: tuple = ()

    def pack(self) -> bytes:
        return pack_adc(self.tick, self.i, self.q, self.board_flags, self.overrange,
                        self.presence, self.events)

    @classmethod
    def unpack(cls, p) -> "AdcFrame":
        _need(len(p) >= _ADC_HEAD.size, "ADC: short payload")
        tick, flags, n, nev, over, pres = _ADC_HEAD.unpack_from(p, 0)
        _need(1 <= n <= MAX_CHANNELS and nev <= MAX_EVENTS, "ADC: channel/event count")
        off = _ADC_HEAD.size + 4 * n
        _need(len(p) == off + _EVENT.size * nev, "ADC: length does not match nch/nev")
        lim = (1 << n) - 1
        _need(not (over & ~lim) and not (pres & ~lim), "ADC: mask bits above nch")
        i = np.frombuffer(p, "<i2", n, _ADC_HEAD.size)
        q = np.frombuffer(p, "<i2", n, _ADC_HEAD.size + 2 * n)
        events = ()
        if nev:
            ev = []
            for k in range(nev):
                ch, kind, serial = _EVENT.unpack_from(p, off + _EVENT.size * k)
                _need(ch < n and kind in (1, 2), "ADC: bad blade event")
                ev.append(BladeEvent(ch, kind, serial))
            events = tuple(ev)
        return cls(tick, i, q, flags, over, pres, events)


def pack_adc(tick, i, q, board_flags=0, overrange=0, presence=0, events=()) -> bytes:
    """Reference (numpy/struct) packer of the ADC payload; range-checked."""
    i = _int_array("i", i, -(1 << 15), (1 << 15) - 1)
    n = i.shape[0]
    if not 1 <= n <= MAX_CHANNELS:
        raise WireUsageError(f"channel count {n} outside 1..{MAX_CHANNELS}")
    q = _int_array("q", q, -(1 << 15), (1 << 15) - 1, n)
    lim = (1 << n) - 1
    head = _ADC_HEAD.pack(_check_int("tick", tick, 0, SEQ_MOD - 1),
                          _check_int("board_flags", board_flags, 0, 0xFFFF), n, len(events),
                          _check_int("overrange", overrange, 0, lim),
                          _check_int("presence", presence, 0, lim))
    if len(events) > MAX_EVENTS:
        raise WireUsageError(f"{len(events)} events > {MAX_EVENTS}")
    ev = b"".join(_EVENT.pack(_check_int("event ch", e[0], 0, n - 1),
                              _check_int("event kind", e[1], 1, 2),
                              _check_int("event serial", e[2], 0, (1 << 64) - 1)) for e in events)
    return head + i.astype("<i2").tobytes() + q.astype("<i2").tobytes() + ev


_DAC_HEAD = struct.Struct("<IBQ")           # tick, nch, hold mask


@dataclass(eq=False)
class DacFrame:
    """Host -> board, every tick: actuator codes computed from ADC tick `tick`.

    pzt: u20 codes (offset binary, mid-scale 2^19), spool: u16 codes (mid 2^15),
    dds: int32 AOM frequency-tuning-word offsets from the nominal FTW.
    hold: u64 mask; a set bit keeps that channel's previous outputs.
    """
    TYPE = MsgType.DAC
    tick: int
    pzt: np.ndarray
    spool: np.ndarray
    dds: np.ndarray
    hold: int = 0

    def pack(self) -> bytes:
        return pack_dac(self.tick, self.pzt, self.spool, self.dds, self.hold)

    @classmethod
    def unpack(cls, p) -> "DacFrame":
        _need(len(p) >= _DAC_HEAD.size, "DAC: short payload")
        tick, n, hold = _DAC_HEAD.unpack_from(p, 0)
        _need(1 <= n <= MAX_CHANNELS, "DAC: channel count")
        _need(not hold >> n, "DAC: hold bits above nch")
        pzt, spool, dds = _codes_unpack(p, _DAC_HEAD.size, n)
        return cls(tick, pzt, spool, dds, hold)


def pack_dac(tick, pzt, spool, dds, hold=0) -> bytes:
    """Reference (numpy/struct) packer of the DAC payload; range-checked."""
    pzt = np.asarray(pzt)
    n = pzt.shape[0] if pzt.ndim == 1 else -1
    if not 1 <= n <= MAX_CHANNELS:
        raise WireUsageError(f"channel count {n} outside 1..{MAX_CHANNELS}")
    pzt, spool, dds = _codes_check(n, pzt, spool, dds)
    head = _DAC_HEAD.pack(_check_int("tick", tick, 0, SEQ_MOD - 1), n,
                          _check_int("hold", hold, 0, (1 << n) - 1))
    return head + _codes_pack(pzt, spool, dds)


_HELLO = struct.Struct("<BHI")


@dataclass
class Hello:
    """Host -> board. proto_version: the host's version; max_frame: the host's receive
    limit in wire bytes; nonce: echoed in CAPS to pair the reply."""
    TYPE = MsgType.HELLO
    proto_version: int = PROTOCOL_VERSION
    max_frame: int = MAX_WIRE
    nonce: int = 0

    def pack(self) -> bytes:
        return _HELLO.pack(self.proto_version, self.max_frame, self.nonce)

    @classmethod
    def unpack(cls, p):
        _need(len(p) == _HELLO.size, "HELLO: length")
        return cls(*_HELLO.unpack(p))


_CAPS = struct.Struct("<BBBBBBIQHIIQBQHHH")


@dataclass
class Caps:
    """Board -> host, reply to HELLO: what the board is and its current settings."""
    TYPE = MsgType.CAPS
    proto_version: int = PROTOCOL_VERSION
    n_channels: int = 40
    adc_bits: int = ADC_BITS
    pzt_bits: int = PZT_BITS
    spool_bits: int = SPOOL_BITS
    dds_bits: int = DDS_BITS
    loop_rate_hz: int = 100_000
    board_serial: int = 0
    max_frame: int = MAX_WIRE          # board receive limit, wire bytes incl. 0x00
    fw_version: int = 0
    nonce: int = 0                     # echo of HELLO.nonce
    auth_counter: int = 0              # last accepted command counter
    key_ids: int = 0                   # bitmask of provisioned key ids
    tick: int = 0                      # full 64-bit tick counter
    watchdog_ms: int = WATCHDOG_MS_DEFAULT
    hold_ms: int = HOLD_MS_DEFAULT
    ramp_ms: int = RAMP_MS_DEFAULT

    def pack(self) -> bytes:
        try:
            return _CAPS.pack(*(getattr(self, f.name) for f in fields(self)))
        except struct.error as e:
            raise WireUsageError(f"CAPS: {e}") from None

    @classmethod
    def unpack(cls, p):
        _need(len(p) == _CAPS.size, "CAPS: length")
        c = cls(*_CAPS.unpack(p))
        _need(1 <= c.n_channels <= MAX_CHANNELS, "CAPS: channel count")
        return c


_HEARTBEAT = struct.Struct("<I")


@dataclass
class Heartbeat:
    """Both directions: time_ms u32, the sender's monotonic milliseconds (wraps)."""
    TYPE = MsgType.HEARTBEAT
    time_ms: int = 0

    def pack(self) -> bytes:
        return _HEARTBEAT.pack(_check_int("time_ms", self.time_ms, 0, SEQ_MOD - 1))

    @classmethod
    def unpack(cls, p):
        _need(len(p) == _HEARTBEAT.size, "HEARTBEAT: length")
        return cls(*_HEARTBEAT.unpack(p))


STATUS_COUNTERS = ("watchdog_trips", "rx_ok", "rx_crc_errors", "rx_cobs_errors", "rx_oversize",
                   "rx_malformed", "rx_lost", "dac_late", "dac_missing", "tx_frames",
                   "tx_dropped", "auth_rejects")
_STATUS_HEAD = struct.Struct("<QBH%dIBQ" % len(STATUS_COUNTERS))


@dataclass
class Status:
    """Board -> host (periodic and on request; a host -> board STATUS with an empty
    payload is the request). counters: dict over STATUS_COUNTERS (u32, wrap).
    serials: u64 blade serial per channel, 0 = no blade. presence: u64 mask."""
    TYPE = MsgType.STATUS
    tick: int = 0
    watchdog_state: int = WatchdogState.RUN
    board_flags: int = 0
    counters: dict = field(default_factory=lambda: dict.fromkeys(STATUS_COUNTERS, 0))
    presence: int = 0
    serials: tuple = ()

    def pack(self) -> bytes:
        n = len(self.serials)
        if n > MAX_CHANNELS:
            raise WireUsageError("STATUS: too many channels")
        try:
            head = _STATUS_HEAD.pack(self.tick, self.watchdog_state, self.board_flags,
                                     *(self.counters.get(k, 0) & 0xFFFFFFFF for k in STATUS_COUNTERS),
                                     n, self.presence)
            return head + struct.pack("<%dQ" % n, *self.serials)
        except struct.error as e:
            raise WireUsageError(f"STATUS: {e}") from None

    @classmethod
    def unpack(cls, p):
        if len(p) == 0:
            return StatusRequest()
        _need(len(p) >= _STATUS_HEAD.size, "STATUS: short payload")
        v = _STATUS_HEAD.unpack_from(p, 0)
        n = v[-2]
        _need(n <= MAX_CHANNELS and len(p) == _STATUS_HEAD.size + 8 * n, "STATUS: length")
        _need(v[1] <= WatchdogState.SAFE, "STATUS: watchdog state")
        k = len(STATUS_COUNTERS)
        return cls(v[0], v[1], v[2], dict(zip(STATUS_COUNTERS, v[3:3 + k])), v[-1],
                   struct.unpack_from("<%dQ" % n, p, _STATUS_HEAD.size))


@dataclass
class StatusRequest:
    """Host -> board: a STATUS frame with an empty payload asks for a STATUS reply."""
    TYPE = MsgType.STATUS

    def pack(self) -> bytes:
        return b""


_PING = struct.Struct("<II")
_PONG = struct.Struct("<IIQI")
AGE_UNKNOWN = 0xFFFFFFFF


@dataclass
class Ping:
    """Host -> board: latency probe. token: any u32, echoed. ref_tick: the u32 tick of the
    ADC frame the host answered just before sending this PING (the DAC frame for it
    precedes the PING on the link)."""
    TYPE = MsgType.PING
    token: int = 0
    ref_tick: int = 0

    def pack(self) -> bytes:
        return _PING.pack(_check_int("token", self.token, 0, SEQ_MOD - 1),
                          _check_int("ref_tick", self.ref_tick, 0, SEQ_MOD - 1))

    @classmethod
    def unpack(cls, p):
        _need(len(p) == _PING.size, "PING: length")
        return cls(*_PING.unpack(p))


@dataclass
class Pong:
    """Board -> host, sent as soon as a PING arrives. token, ref_tick: echoed.
    ticks_done: the board's u64 tick counter when the PING arrived (ticks completed).
    age_us: microseconds from the production of the ADC frame `ref_tick` (the end of
    its last tick) to the arrival of the PING, AGE_UNKNOWN if that frame is too old."""
    TYPE = MsgType.PONG
    token: int = 0
    ref_tick: int = 0
    ticks_done: int = 0
    age_us: int = AGE_UNKNOWN

    def pack(self) -> bytes:
        try:
            return _PONG.pack(self.token, self.ref_tick, self.ticks_done, self.age_us)
        except struct.error as e:
            raise WireUsageError(f"PONG: {e}") from None

    @classmethod
    def unpack(cls, p):
        _need(len(p) == _PONG.size, "PONG: length")
        return cls(*_PONG.unpack(p))


_ACK = struct.Struct("<BII")
_NACK = struct.Struct("<BIBI")


@dataclass
class Ack:
    """Board -> host: the command (ref_type, ref_seq) was applied. detail: type specific
    (FLASH_WRITE: bytes written so far; CONFIG: 0)."""
    TYPE = MsgType.ACK
    ref_type: int
    ref_seq: int
    detail: int = 0

    def pack(self) -> bytes:
        return _ACK.pack(self.ref_type, self.ref_seq, self.detail)

    @classmethod
    def unpack(cls, p):
        _need(len(p) == _ACK.size, "ACK: length")
        return cls(*_ACK.unpack(p))


@dataclass
class Nack:
    """Board -> host (or host -> board): frame (ref_type, ref_seq) refused for `reason`
    (NackReason); detail: reason specific."""
    TYPE = MsgType.NACK
    ref_type: int
    ref_seq: int
    reason: int
    detail: int = 0

    def pack(self) -> bytes:
        return _NACK.pack(self.ref_type, self.ref_seq, self.reason, self.detail)

    @classmethod
    def unpack(cls, p):
        _need(len(p) == _NACK.size, "NACK: length")
        return cls(*_NACK.unpack(p))


_CONFIG_HEAD = struct.Struct("<HHHHHB")


@dataclass(eq=False)
class Config:
    """Host -> board, authenticated. Watchdog and stream settings, safe-state presets.

    watchdog_ms: host silence before HOLD, 1..10000 ms, default 50.
    hold_ms: time held before the ramp starts, 0..60000 ms, default 200.
    ramp_ms: linear ramp time to the safe preset, 0..60000 ms (0 = step), default 1000.
    status_period_ms: periodic STATUS, 0..60000 ms (0 = on request only), default 100.
    stream_divider: ADC frame every N ticks, 1..1000, default 1.
    safe_pzt/safe_spool/safe_dds: per-channel safe preset codes (empty = keep the
      board's presets; default mid-scale, mid-scale, 0).
    """
    TYPE = MsgType.CONFIG
    watchdog_ms: int = WATCHDOG_MS_DEFAULT
    hold_ms: int = HOLD_MS_DEFAULT
    ramp_ms: int = RAMP_MS_DEFAULT
    status_period_ms: int = STATUS_PERIOD_MS_DEFAULT
    stream_divider: int = STREAM_DIVIDER_DEFAULT
    safe_pzt: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    safe_spool: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint16))
    safe_dds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))

    RANGES = {"watchdog_ms": (1, 10_000), "hold_ms": (0, 60_000), "ramp_ms": (0, 60_000),
              "status_period_ms": (0, 60_000), "stream_divider": (1, 1000)}

    def pack(self) -> bytes:
        v = [_check_int(k, getattr(self, k), *r) for k, r in self.RANGES.items()]
        n = np.asarray(self.safe_pzt).shape[0]
        if n > MAX_CHANNELS:
            raise WireUsageError("CONFIG: too many channels")
        pzt, spool, dds = _codes_check(n, self.safe_pzt, self.safe_spool, self.safe_dds)
        return _CONFIG_HEAD.pack(*v, n) + _codes_pack(pzt, spool, dds)

    @classmethod
    def unpack(cls, p):
        _need(len(p) >= _CONFIG_HEAD.size, "CONFIG: short payload")
        *v, n = _CONFIG_HEAD.unpack_from(p, 0)
        _need(n <= MAX_CHANNELS, "CONFIG: channel count")
        for (k, (lo, hi)), x in zip(cls.RANGES.items(), v):
            _need(lo <= x <= hi, f"CONFIG: {k}={x} out of range [{lo}, {hi}]")
        return cls(*v, *_codes_unpack(p, _CONFIG_HEAD.size, n))


_OVR_HEAD = struct.Struct("<BQB")


@dataclass(eq=False)
class ActuatorOverride:
    """Host -> board, authenticated. mode FORCE: channels in `mask` output the given
    codes (arrays over all nch channels) until RELEASE; RELEASE: back to the DAC stream."""
    TYPE = MsgType.ACTUATOR_OVERRIDE
    mode: int
    mask: int
    pzt: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    spool: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint16))
    dds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))

    def pack(self) -> bytes:
        n = np.asarray(self.pzt).shape[0]
        if n > MAX_CHANNELS:
            raise WireUsageError("ACTUATOR_OVERRIDE: too many channels")
        mode = _check_int("mode", self.mode, 0, 1)
        if mode == OverrideMode.FORCE and n == 0:
            raise WireUsageError("ACTUATOR_OVERRIDE: FORCE needs codes")
        mask = _check_int("mask", self.mask, 0, (1 << (n if mode == OverrideMode.FORCE
                                                       else MAX_CHANNELS)) - 1)
        pzt, spool, dds = _codes_check(n, self.pzt, self.spool, self.dds)
        return _OVR_HEAD.pack(mode, mask, n) + _codes_pack(pzt, spool, dds)

    @classmethod
    def unpack(cls, p):
        _need(len(p) >= _OVR_HEAD.size, "ACTUATOR_OVERRIDE: short payload")
        mode, mask, n = _OVR_HEAD.unpack_from(p, 0)
        _need(mode in (0, 1) and n <= MAX_CHANNELS, "ACTUATOR_OVERRIDE: mode/channels")
        _need(mode == OverrideMode.RELEASE or (n and not mask >> n), "ACTUATOR_OVERRIDE: mask")
        return cls(mode, mask, *_codes_unpack(p, _OVR_HEAD.size, n))


_FREAD = struct.Struct("<BIH")
_FDATA = struct.Struct("<BI")
_FWRITE = struct.Struct("<II")
FLASH_SLOT_ACTIVE = 0xFF


@dataclass
class FlashRead:
    """Host -> board: read `length` (1..512) bytes at `offset` of slot 0, 1 or 0xFF (active)."""
    TYPE = MsgType.FLASH_READ
    slot: int
    offset: int
    length: int

    def pack(self) -> bytes:
        _check_int("slot", self.slot, 0, 255)
        _check_int("length", self.length, 1, FLASH_CHUNK_MAX)
        return _FREAD.pack(self.slot, _check_int("offset", self.offset, 0, SEQ_MOD - 1), self.length)

    @classmethod
    def unpack(cls, p):
        _need(len(p) == _FREAD.size, "FLASH_READ: length")
        r = cls(*_FREAD.unpack(p))
        _need(1 <= r.length <= FLASH_CHUNK_MAX, "FLASH_READ: chunk length")
        return r


@dataclass
class FlashData:
    """Board -> host: reply to FLASH_READ (slot actually read, offset, data)."""
    TYPE = MsgType.FLASH_DATA
    slot: int
    offset: int
    data: bytes

    def pack(self) -> bytes:
        if len(self.data) > FLASH_CHUNK_MAX:
            raise WireUsageError("FLASH_DATA: chunk too long")
        return _FDATA.pack(self.slot, self.offset) + bytes(self.data)

    @classmethod
    def unpack(cls, p):
        _need(_FDATA.size <= len(p) <= _FDATA.size + FLASH_CHUNK_MAX, "FLASH_DATA: length")
        return cls(*_FDATA.unpack_from(p, 0), bytes(p[_FDATA.size:]))


@dataclass
class FlashWrite:
    """Host -> board, authenticated: chunk of a new image. offset 0 starts a write to the
    slot not holding the newest valid image (the board erases it); chunks must arrive in
    order; the chunk with offset + len(data) == total_len completes the write and the
    board verifies the image before ACKing it."""
    TYPE = MsgType.FLASH_WRITE
    offset: int
    total_len: int
    data: bytes

    def pack(self) -> bytes:
        if not 1 <= len(self.data) <= FLASH_CHUNK_MAX:
            raise WireUsageError("FLASH_WRITE: chunk length must be 1..512")
        _check_int("total_len", self.total_len, 1, SEQ_MOD - 1)
        if self.offset + len(self.data) > self.total_len:
            raise WireUsageError("FLASH_WRITE: chunk beyond total_len")
        return _FWRITE.pack(_check_int("offset", self.offset, 0, SEQ_MOD - 1),
                            self.total_len) + bytes(self.data)

    @classmethod
    def unpack(cls, p):
        _need(_FWRITE.size < len(p) <= _FWRITE.size + FLASH_CHUNK_MAX, "FLASH_WRITE: length")
        off, total = _FWRITE.unpack_from(p, 0)
        _need(off + len(p) - _FWRITE.size <= total, "FLASH_WRITE: chunk beyond total_len")
        return cls(off, total, bytes(p[_FWRITE.size:]))


@dataclass(eq=False)
class Signed:
    """An authenticated frame as received: not verified yet. Pass `payload` to
    hal.auth.Verifier.verify(type, payload), then BODY_TYPES[type].unpack(body)."""
    type: int
    key_id: int
    counter: int
    body: bytes
    tag: bytes
    payload: bytes

    @classmethod
    def unpack_as(cls, msg_type, p):
        try:
            kid, ctr, body, tag = auth.split(p)
        except auth.AuthError as e:
            raise WireFormatError(f"signed payload: {e}") from None
        return cls(int(msg_type), kid, ctr, body, tag, bytes(p))


BODY_TYPES = {MsgType.CONFIG: Config, MsgType.ACTUATOR_OVERRIDE: ActuatorOverride,
              MsgType.FLASH_WRITE: FlashWrite}
UNPACKERS = {MsgType.ADC: AdcFrame.unpack, MsgType.DAC: DacFrame.unpack,
             MsgType.HELLO: Hello.unpack, MsgType.CAPS: Caps.unpack,
             MsgType.HEARTBEAT: Heartbeat.unpack, MsgType.STATUS: Status.unpack,
             MsgType.ACK: Ack.unpack, MsgType.NACK: Nack.unpack,
             MsgType.PING: Ping.unpack, MsgType.PONG: Pong.unpack,
             MsgType.FLASH_READ: FlashRead.unpack, MsgType.FLASH_DATA: FlashData.unpack}
for _t in AUTHENTICATED:
    UNPACKERS[_t] = (lambda t: lambda p: Signed.unpack_as(t, p))(_t)


def unpack_body(msg_type, body):
    """Body of a verified authenticated command -> Config / ActuatorOverride / FlashWrite."""
    return BODY_TYPES[MsgType(msg_type)].unpack(body)


# ----------------------------------------------------------------------------- generic framing

def encode_frame(msg_type: int, seq: int, payload: bytes) -> bytes:
    """Reference framer: COBS(header | payload | crc16) + 0x00 (crcmod, hal.cobs)."""
    msg_type = _check_int("type", msg_type, 0, 255)
    seq = _check_int("seq", seq, 0, SEQ_MOD - 1)
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise WireUsageError(f"payload must be bytes, got {type(payload).__name__}")
    if len(payload) > MAX_PAYLOAD:
        raise WireUsageError(f"payload {len(payload)} bytes > {MAX_PAYLOAD}")
    body = HEADER.pack(PROTOCOL_VERSION, msg_type, seq, len(payload)) + bytes(payload)
    return cobs.encode(body + crc16(body).to_bytes(2, "little")) + b"\x00"


def encode_message(msg, seq: int, signer=None) -> bytes:
    """Frame a message object (pack()); authenticated types need a hal.auth.Signer."""
    t = msg.TYPE
    payload = msg.pack()
    if t in AUTHENTICATED:
        if signer is None:
            raise WireUsageError(f"{t.name} must be signed: pass a hal.auth.Signer")
        payload = signer.sign(t, payload)
    return encode_frame(t, seq, payload)


def wire_len_max(payload_len: int) -> int:
    """Worst-case wire bytes (COBS overhead + 0x00 included) of a payload length."""
    return cobs.max_encoded_len(HEADER_LEN + payload_len + CRC_LEN) + 1


def adc_payload_len(n_channels: int, n_events: int = 0) -> int:
    return _ADC_HEAD.size + 4 * n_channels + _EVENT.size * n_events


def dac_payload_len(n_channels: int) -> int:
    return _DAC_HEAD.size + 9 * n_channels


def efficiency(payload_len: int) -> float:
    """Protocol efficiency = payload bytes / worst-case wire bytes."""
    return payload_len / wire_len_max(payload_len)


# ----------------------------------------------------------------------------- fast path kernels

@numba.njit(cache=True, nogil=True, inline="always")
def _put(buf, off, v, nbytes):
    # little-endian store of the low nbytes of v (v >= 0 or two's complement int64)
    for k in range(nbytes):
        buf[off + k] = (v >> (8 * k)) & 0xFF


@numba.njit(cache=True, nogil=True)
def _finish(scratch, m, out):
    # scratch[:m] = header | payload; append CRC, COBS into out, append the 0x00.
    crc = crc16_update(_CRC_INIT, scratch, 0, m) ^ _CRC_XOROUT
    scratch[m] = crc & 0xFF
    scratch[m + 1] = crc >> 8
    k = cobs.encode_into(scratch, m + 2, out, 0)
    out[k] = 0
    return k + 1


@numba.njit(cache=True, nogil=True)
def _adc_kernel(scratch, out, seq, tick, flags, over_lo, over_hi, pres_lo, pres_hi, i, q):
    """ADC frame into out; returns its wire length, or -1 (I/Q out of int16)."""
    n = i.shape[0]
    plen = 24 + 4 * n
    scratch[0] = PROTOCOL_VERSION
    scratch[1] = 0x10
    _put(scratch, 2, seq, 4)
    _put(scratch, 6, plen, 2)
    _put(scratch, 8, tick, 4)
    _put(scratch, 12, flags, 2)
    scratch[14] = n
    scratch[15] = 0
    _put(scratch, 16, over_lo, 4)
    _put(scratch, 20, over_hi, 4)
    _put(scratch, 24, pres_lo, 4)
    _put(scratch, 28, pres_hi, 4)
    oi = 32
    oq = 32 + 2 * n
    for c in range(n):
        vi = np.int64(i[c])                    # int16 range checked here: any int dtype works
        vq = np.int64(q[c])
        if vi < -32768 or vi > 32767 or vq < -32768 or vq > 32767:
            return -1
        _put(scratch, oi + 2 * c, vi, 2)       # two's complement low 16 bits
        _put(scratch, oq + 2 * c, vq, 2)
    return _finish(scratch, 8 + plen, out)


@numba.njit(cache=True, nogil=True)
def _dac_kernel(scratch, out, seq, tick, hold_lo, hold_hi, pzt, spool, dds):
    """DAC frame into out; returns its wire length, or -1/-2/-3 (pzt/spool/dds range)."""
    n = pzt.shape[0]
    plen = 13 + 9 * n
    scratch[0] = PROTOCOL_VERSION
    scratch[1] = 0x11
    _put(scratch, 2, seq, 4)
    _put(scratch, 6, plen, 2)
    _put(scratch, 8, tick, 4)
    scratch[12] = n
    _put(scratch, 13, hold_lo, 4)
    _put(scratch, 17, hold_hi, 4)
    op = 21
    osp = 21 + 3 * n
    od = 21 + 5 * n
    for c in range(n):
        p = np.int64(pzt[c])
        s = np.int64(spool[c])
        d = np.int64(dds[c])
        if p < 0 or p > 0xFFFFF:               # 20-bit code
            return -1
        if s < 0 or s > 0xFFFF:
            return -2
        if d < -2147483648 or d > 2147483647:
            return -3
        _put(scratch, op + 3 * c, p, 3)
        _put(scratch, osp + 2 * c, s, 2)
        _put(scratch, od + 4 * c, d, 4)
    return _finish(scratch, 8 + plen, out)


_ERR_CRC = -10


@numba.njit(cache=True, nogil=True)
def _unframe_kernel(src, start, stop, dst):
    """COBS-decode src[start:stop] into dst and check its CRC-16.

    Returns the decoded length (header | payload | crc), a cobs.ERR_* (< 0), or
    _ERR_CRC when the frame is too short for header + CRC or the CRC fails.
    """
    n = cobs.decode_into(src, start, stop, dst)
    if n < 0:
        return n
    if n < 8 + 2:
        return _ERR_CRC
    crc = crc16_update(_CRC_INIT, dst, 0, n - 2) ^ _CRC_XOROUT
    if crc != (dst[n - 2] | (np.int64(dst[n - 1]) << 8)):
        return _ERR_CRC
    return n


def _as_kernel_array(name, a, n=None):
    a = np.asarray(a)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise WireUsageError(f"{name} must be a 1-D integer array, got {a.dtype} shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise WireUsageError(f"{name} has {a.shape[0]} channels, expected {n}")
    if a.dtype == np.uint64:                   # numba mixes uint64 with int64 into float64
        a = _int_array(name, a, 0, (1 << 63) - 1).astype(np.int64)
    return a


class Encoder:
    """Sender side of one direction: owns the tx sequence number and the frame buffers.

    seq: sequence number of the next frame (u32, wraps). Every method returns one
    complete wire frame (bytes, 0x00 included) and advances seq by one.
    """

    def __init__(self, seq: int = 0):
        self.seq = _check_int("seq", seq, 0, SEQ_MOD - 1)
        self._scratch = np.zeros(MAX_FRAME, np.uint8)
        self._out = np.zeros(MAX_WIRE, np.uint8)

    def _next(self) -> int:
        s = self.seq
        self.seq = (s + 1) & (SEQ_MOD - 1)
        return s

    def frame(self, msg_type: int, payload: bytes) -> bytes:
        f = encode_frame(msg_type, self.seq, payload)
        self._next()
        return f

    def message(self, msg, signer=None) -> bytes:
        f = encode_message(msg, self.seq, signer)
        self._next()
        return f

    def adc(self, tick, i, q, *, board_flags=0, overrange=0, presence=0, events=()) -> bytes:
        """40-channel (1..64) ADC frame through the numba kernel. i, q: integer arrays
        (int16 range). Events (rare) take the reference path."""
        if events:
            return self.frame(MsgType.ADC, pack_adc(tick, i, q, board_flags, overrange,
                                                    presence, events))
        i = _as_kernel_array("i", i)
        n = i.shape[0]
        if not 1 <= n <= MAX_CHANNELS:
            raise WireUsageError(f"channel count {n} outside 1..{MAX_CHANNELS}")
        q = _as_kernel_array("q", q, n)
        lim = (1 << n) - 1
        if not (type(tick) is int and type(board_flags) is int and type(overrange) is int
                and type(presence) is int and 0 <= tick < SEQ_MOD and 0 <= board_flags <= 0xFFFF
                and 0 <= overrange <= lim and 0 <= presence <= lim):
            tick = _check_int("tick", tick, 0, SEQ_MOD - 1)
            board_flags = _check_int("board_flags", board_flags, 0, 0xFFFF)
            overrange = _check_int("overrange", overrange, 0, lim)
            presence = _check_int("presence", presence, 0, lim)
        k = _adc_kernel(self._scratch, self._out, self.seq, tick, board_flags,
                        overrange & 0xFFFFFFFF, overrange >> 32,
                        presence & 0xFFFFFFFF, presence >> 32, i, q)
        if k < 0:
            _int_array("i", i, -(1 << 15), (1 << 15) - 1)
            _int_array("q", q, -(1 << 15), (1 << 15) - 1)
        self._next()
        return self._out[:k].tobytes()

    def dac(self, tick, pzt, spool, dds, *, hold=0) -> bytes:
        """DAC frame through the numba kernel. pzt: u20 codes, spool: u16 codes,
        dds: int32 FTW offsets (integer arrays of nch = 1..64), hold: u64 mask."""
        pzt = _as_kernel_array("pzt", pzt)
        n = pzt.shape[0]
        if not 1 <= n <= MAX_CHANNELS:
            raise WireUsageError(f"channel count {n} outside 1..{MAX_CHANNELS}")
        spool = _as_kernel_array("spool", spool, n)
        dds = _as_kernel_array("dds", dds, n)
        if not (type(tick) is int and type(hold) is int and 0 <= tick < SEQ_MOD
                and 0 <= hold < (1 << n)):
            tick = _check_int("tick", tick, 0, SEQ_MOD - 1)
            hold = _check_int("hold", hold, 0, (1 << n) - 1)
        k = _dac_kernel(self._scratch, self._out, self.seq, tick,
                        hold & 0xFFFFFFFF, hold >> 32, pzt, spool, dds)
        if k < 0:
            _codes_check(n, pzt, spool, dds)
        self._next()
        return self._out[:k].tobytes()


def encode_adc(seq, tick, i, q, **kw) -> bytes:
    """One ADC frame with sequence number seq (fast path, see Encoder.adc)."""
    return Encoder(seq).adc(tick, i, q, **kw)


def encode_dac(seq, tick, pzt, spool, dds, **kw) -> bytes:
    """One DAC frame with sequence number seq (fast path, see Encoder.dac)."""
    return Encoder(seq).dac(tick, pzt, spool, dds, **kw)


# ----------------------------------------------------------------------------- receive side

class Frame:
    """One decoded frame: type (MsgType), seq, msg (the unpacked message, or Signed),
    late (True if it arrived after a newer frame: reordered)."""
    __slots__ = ("type", "seq", "msg", "late")

    def __init__(self, type, seq, msg, late=False):
        self.type, self.seq, self.msg, self.late = type, seq, msg, late

    def __repr__(self):
        return f"Frame({MsgType(self.type).name}, seq={self.seq}, late={self.late}, {self.msg!r})"


@dataclass
class DecoderStats:
    """Receive counters, exact.

    bytes_in: bytes fed. frames_ok: frames delivered (CRC, header and payload valid).
    crc_errors: COBS-valid frames whose CRC failed, or too short to hold header + CRC.
    cobs_errors: frames that are not valid COBS (zero-length blocks, truncated block).
    oversize: frames longer than max_wire (dropped; the bytes up to the next 0x00 are
      discarded and counted in discarded_bytes).
    malformed: CRC-valid frames with a bad version, unknown type, length field that
      does not match, or a payload that does not follow its layout (sub-counters
      bad_version, unknown_type).
    seq_gaps: forward jumps of the sequence number; lost: frames never received
      (sum of gap sizes, minus late arrivals that filled a gap); duplicates: frames
      received twice (dropped); reordered: frames that arrived after a newer one
      (delivered with late=True); seq_resets: sender restarts detected (a jump back
      beyond the reorder window) and re-bases on HELLO/CAPS.
    """
    bytes_in: int = 0
    frames_ok: int = 0
    crc_errors: int = 0
    cobs_errors: int = 0
    oversize: int = 0
    malformed: int = 0
    bad_version: int = 0
    unknown_type: int = 0
    seq_gaps: int = 0
    lost: int = 0
    duplicates: int = 0
    reordered: int = 0
    seq_resets: int = 0
    discarded_bytes: int = 0

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def rejected(self) -> int:
        """Frames dropped for a framing or integrity error."""
        return self.crc_errors + self.cobs_errors + self.oversize + self.malformed


SEQ_WINDOW = 64                              # frames remembered for duplicate/reorder detection
_WINDOW_MASK = (1 << SEQ_WINDOW) - 1
_RESYNC_TYPES = frozenset({MsgType.HELLO, MsgType.CAPS})


class Decoder:
    """Streaming receiver: feed() arbitrary byte chunks, get decoded Frames.

    max_wire: largest frame accepted, wire bytes incl. the 0x00 (default MAX_WIRE,
      also the bound of the internal buffer: it never holds more than max_wire bytes).
    types: accepted message types (default: all); others count as unknown_type.

    on_reject: optional callable(type, seq, reason, detail) called for every CRC-valid
      frame that is refused (reason "bad_version", "unknown_type", "length" or
      "layout"; detail: the version byte, the type byte, or the error text), so a
      board can NACK it (docs/protocol.md 8.7). Its sequence number is only as
      trustworthy as a CRC-valid header.

    feed() never raises on bad input; counters are in `stats`. It raises
    WireUsageError only if given something that is not bytes-like.
    """

    def __init__(self, max_wire: int = MAX_WIRE, types=None, on_reject=None):
        if not 16 <= max_wire <= 1 << 20:
            raise WireUsageError(f"max_wire={max_wire} outside [16, 2^20]")
        self.max_wire = max_wire
        self._max_body = max_wire - 1
        self._types = _KNOWN_TYPES if types is None else frozenset(int(t) for t in types)
        self.on_reject = on_reject
        self._buf = bytearray()
        self._dst = np.zeros(max_wire, np.uint8)   # decoded frame (shorter than its encoding)
        self._discarding = False
        self.stats = DecoderStats()
        self._have_seq = False
        self._expect = 0
        self._window = 0                         # bit k: frame expect-1-k was received
        self._span = 0                           # window bits that lie after the re-base point

    def _rebase(self, seq) -> None:
        self._have_seq = True
        self._expect = (seq + 1) & 0xFFFFFFFF
        self._window = 1
        self._span = 1

    def reset(self) -> None:
        """Drop buffered bytes and sequence state (counters are kept)."""
        self._buf.clear()
        self._discarding = False
        self.reset_sequence()

    def reset_sequence(self) -> None:
        """Take the next frame's seq as the new start (no gap counted)."""
        self._have_seq = False

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held (<= max_wire - 1)."""
        return len(self._buf)

    def feed(self, data) -> list:
        """Take any chunk of received bytes; return the Frames completed by it, in order."""
        if isinstance(data, memoryview):
            data = data.tobytes()
        elif not isinstance(data, (bytes, bytearray)):
            raise WireUsageError(f"feed() takes bytes-like data, got {type(data).__name__}")
        st = self.stats
        st.bytes_in += len(data)
        out = []
        pos = 0
        n = len(data)
        buf = self._buf
        arr = None
        while pos < n:
            z = data.find(0, pos)
            if z < 0:                            # tail of an unfinished frame
                if self._discarding:
                    st.discarded_bytes += n - pos
                elif len(buf) + n - pos > self._max_body:
                    st.oversize += 1
                    st.discarded_bytes += len(buf) + n - pos
                    buf.clear()
                    self._discarding = True
                else:
                    buf += data[pos:]
                break
            if self._discarding:                 # end of an oversize frame: resync here
                st.discarded_bytes += z - pos + 1
                self._discarding = False
            elif buf:
                if len(buf) + z - pos > self._max_body:
                    st.oversize += 1
                    st.discarded_bytes += len(buf) + z - pos + 1
                else:
                    buf += data[pos:z]
                    self._frame(np.frombuffer(bytes(buf), np.uint8), 0, len(buf), out)
                buf.clear()
            elif z > pos:                        # empty frames (0x00 0x00) are idle fill
                if z - pos > self._max_body:
                    st.oversize += 1
                    st.discarded_bytes += z - pos + 1
                else:
                    if arr is None:
                        arr = np.frombuffer(data, np.uint8)
                    self._frame(arr, pos, z, out)
            pos = z + 1
        return out

    def _frame(self, src, start, stop, out) -> None:
        st = self.stats
        k = _unframe_kernel(src, start, stop, self._dst)
        if k < 0:
            if k == _ERR_CRC:
                st.crc_errors += 1
            else:
                st.cobs_errors += 1
            return
        dec = self._dst[:k].tobytes()
        m = k - CRC_LEN
        ver, t, seq, plen = HEADER.unpack_from(dec, 0)
        if ver != PROTOCOL_VERSION:
            st.bad_version += 1
            st.malformed += 1
            if self.on_reject is not None:
                self.on_reject(t, seq, "bad_version", ver)
            return
        if t not in self._types:
            st.unknown_type += 1
            st.malformed += 1
            if self.on_reject is not None:
                self.on_reject(t, seq, "unknown_type", t)
            return
        if plen != m - HEADER_LEN:
            st.malformed += 1
            if self.on_reject is not None:
                self.on_reject(t, seq, "length", f"len field {plen}, payload {m - HEADER_LEN}")
            return
        late = False
        if t in _RESYNC_TYPES or not self._have_seq:
            if self._have_seq and seq != self._expect:
                st.seq_resets += 1
            self._rebase(seq)
        else:
            d = (seq - self._expect) & 0xFFFFFFFF
            if d < 0x80000000:                   # in order (d = 0) or ahead: d frames missing
                if d:
                    st.seq_gaps += 1
                    st.lost += d
                shift = d + 1
                self._window = ((self._window << shift) | 1) & _WINDOW_MASK if shift < SEQ_WINDOW else 1
                self._span = min(self._span + shift, SEQ_WINDOW)
                self._expect = (seq + 1) & 0xFFFFFFFF
            else:
                age = SEQ_MOD - d - 1             # frames older than the newest received
                if age < SEQ_WINDOW:
                    bit = 1 << age
                    if self._window & bit:
                        st.duplicates += 1
                        return
                    self._window |= bit
                    st.reordered += 1
                    if age < self._span:         # it had been counted lost
                        st.lost -= 1
                    late = True
                else:                            # far behind: the sender restarted
                    st.seq_resets += 1
                    self._rebase(seq)
        try:
            msg = UNPACKERS[t](dec[HEADER_LEN:m])
        except (WireFormatError, struct.error, ValueError) as e:
            st.malformed += 1
            if self.on_reject is not None:
                self.on_reject(t, seq, "layout", str(e))
            return
        st.frames_ok += 1
        out.append(Frame(t, seq, msg, late))
