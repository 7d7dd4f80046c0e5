"""`serial://PORT`: a DAC/ADC board over pyserial, speaking docs/protocol.md.

PORT is any pyserial URL: a device path (/dev/ttyACM0, a pseudo-terminal of
`attobus board --pty`), `socket://HOST:PORT` (`attobus board --listen`) or
`loop://`. Options follow a '?' (they are the backend's, not pyserial's):

  baud=N        line rate for a real UART (default 12000000; ignored by ptys and sockets)
  key=PATH      command key file (hal.auth.load_key_file; 0600) for CONFIG,
                ACTUATOR_OVERRIDE and FLASH_WRITE; key_id=K its board slot (default 0)
  truth=PATH    the emulator's ground-truth file (test only, docs/hil.md): fills
                InFrame.true_delay_s; never read by the servo
  timeout_ms=T  comm timeout (default: 10 frame periods, at least 20 ms)
  ping_every=N  a PING after every N-th DAC frame (default 16; 0 = never)

Session (docs/protocol.md 9): open() flushes the line with one 0x00, sends
HELLO and waits 100 ms for CAPS, up to 10 times; then it reads two ADC
frames to learn the stream divider D (their tick spacing), reports the
host loop rate R/D as `capabilities.loop_rate_hz`, and asks for a STATUS
to learn the blades present (`serials`, kept current from STATUS frames
and the blade events of every ADC frame; InFrame.blade_serial).

exchange(out) sends the DAC frame for the ADC frame returned last (the hold
mask from out.hold), then waits for the next ADC frame and returns it. If
several arrived, the newest is returned and the older ones are counted in
`skipped` (a late frame is worth nothing to a servo). An ADC frame flagged
SAFE or WATCHDOG_RAMP (the board gave up on a silent host) makes the
backend send HELLO, at most every 100 ms, to re-arm it (`auto_arm`,
counted in `rearms`); the board then holds its outputs until the next DAC
frame. No ADC frame within the
comm timeout: `CommTimeout` is raised; the caller raises COMM_TIMEOUT and
holds (tools.hil sends hold frames, which keep the board's outputs where they
are). While the board stays silent past `reconnect_after_s`, each exchange
re-sends HELLO (re-opening the port first if it failed), with back-off
from 50 ms doubling to 2 s; the first ADC frame after that ends it.

Latency: after every ping_every-th DAC frame the host sends a PING carrying
the tick it answered; the board answers at once with a PONG holding the
time from that ADC frame's production to the PING's arrival (`age_s`: the
loop's transport latency, host computation included, measured by the
board's clock) and its tick counter; the host keeps `latency` samples and
the round-trip time of the PING itself.

Commands: `configure`, `override`, `flash_write` sign their payload (hal.auth)
and wait for ACK or NACK; a NACK raises CommandRejected with the reason in
words. Values are range-checked (wire.Config, OutFrame.validate) before
anything is sent.
"""
from __future__ import annotations

import math
import mmap
import os
import select
import struct
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import serial

from hal import auth, wire
from hal.backend import Backend, BackendError, Capabilities
from hal.frames import InFrame, OutFrame
from hal.wire import MsgType, NackReason

NACK_TEXT = {
    NackReason.BAD_VERSION: "protocol version not supported by the board",
    NackReason.UNKNOWN_TYPE: "message type unknown to the board",
    NackReason.MALFORMED: "payload does not follow its layout",
    NackReason.AUTH_TRUNCATED: "authenticated payload too short",
    NackReason.AUTH_UNKNOWN_KEY: "key id not provisioned on the board (see docs/protocol.md 12.3)",
    NackReason.AUTH_BAD_TAG: "authentication tag wrong: forged, corrupted or signed with another key",
    NackReason.AUTH_REPLAY: "counter not above the last accepted one: a replayed command",
    NackReason.RANGE: "a field is out of range",
    NackReason.BUSY: "board busy (or could not persist the command counter)",
    NackReason.NOT_ARMED: "board in its safe state: send HELLO first",
    NackReason.FLASH_OFFSET: "flash chunk out of order",
    NackReason.FLASH_VERIFY: "written image failed verification; the previous image stays active",
    NackReason.FLASH_SLOT: "no valid flash image to read",
    NackReason.TOO_LARGE: "image larger than a flash slot",
    NackReason.CHANNELS: "channel count differs from the board's",
}

# Truth file layout (written by sim_hw.board.TruthWriter; docs/hil.md).
_TRUTH_HEAD = struct.Struct("<8sIIII dd 24x")
_TRUTH_HEAD_LEN = 64


class CommTimeout(BackendError):
    """No ADC frame from the board within the comm timeout (or the port failed)."""


class CommandRejected(BackendError):
    """The board refused a command. msg_type, reason (NackReason), detail (u32)."""

    def __init__(self, msg_type, reason, detail):
        self.msg_type, self.reason, self.detail = int(msg_type), int(reason), int(detail)
        try:
            name = NackReason(reason).name
        except ValueError:
            name = f"reason {reason}"
        text = NACK_TEXT.get(reason, "")
        extra = ""
        if reason == NackReason.AUTH_REPLAY:
            extra = f" (board's last accepted counter ends in {detail})"
        elif reason == NackReason.RANGE:
            extra = f" (field {detail})"
        elif reason == NackReason.FLASH_OFFSET:
            extra = f" (expected offset {detail})"
        elif reason == NackReason.CHANNELS:
            extra = f" (board has {detail} channels)"
        super().__init__(f"board refused {MsgType(msg_type).name}: {name}: {text}{extra}")


@dataclass
class LatencySample:
    """One PING: rtt_s (host wall clock, PING out to PONG in), age_s (board clock: ADC
    frame produced -> PING arrived, None if unknown), ticks (board ticks in between)."""
    rtt_s: float
    age_s: float | None
    ticks: int


class TruthReader:
    """Reader of the emulator's ground-truth file (test only, docs/hil.md)."""

    def __init__(self, path, n_channels):
        self._f = open(path, "rb")
        self._mm = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
        magic, ver, n, cap, _, self.frame_rate_hz, self.board_rate_hz = _TRUTH_HEAD.unpack_from(self._mm, 0)
        if magic != b"ATBTRUTH" or ver != 1:
            raise BackendError(f"{path}: not an attobus truth file")
        if n != n_channels:
            raise BackendError(f"{path}: truth for {n} channels, board has {n_channels}")
        off = _TRUTH_HEAD_LEN
        self.cap = cap
        self.tick = np.frombuffer(self._mm, np.int64, cap, off)
        off += 8 * cap
        self.mean = np.frombuffer(self._mm, np.float64, cap * n, off).reshape(cap, n)
        off += 8 * cap * n
        self.msq = np.frombuffer(self._mm, np.float64, cap * n, off).reshape(cap, n)
        self.nan = np.full(n, np.nan)

    def read(self, tick_u32, mean_out, msq_out) -> bool:
        k = tick_u32 % self.cap
        if (int(self.tick[k]) & 0xFFFFFFFF) != tick_u32 or self.tick[k] < 0:
            mean_out[:] = np.nan
            msq_out[:] = np.nan
            return False
        mean_out[:] = self.mean[k]
        msq_out[:] = self.msq[k]
        return (int(self.tick[k]) & 0xFFFFFFFF) == tick_u32

    def close(self):
        try:
            del self.tick, self.mean, self.msq
            self._mm.close()
        except (BufferError, AttributeError):
            pass
        self._f.close()


class SerialBackend(Backend):
    """The board behind `port` (a pyserial URL). See the module docstring."""

    HELLO_TIMEOUT_S = 0.1
    HELLO_TRIES = 10
    BACKOFF_S = (0.05, 2.0)

    def __init__(self, port: str, *, baudrate: int = 12_000_000, key: bytes | None = None,
                 key_id: int = 0, truth: str | None = None, comm_timeout_s: float | None = None,
                 ping_every: int = 16, reconnect_after_s: float | None = None,
                 counter_store=None):
        if not port:
            raise ValueError("serial:// needs a port: a device path, socket://HOST:PORT or loop://")
        self.port = port
        self.baudrate = int(baudrate)
        self.signer = None if key is None else auth.Signer(key, key_id, store=counter_store)
        self.truth_path = truth
        self._comm_timeout_s = comm_timeout_s
        self.ping_every = int(ping_every)
        self._reconnect_after_s = reconnect_after_s
        self.ser = None
        self._fileno = None
        self.caps: wire.Caps | None = None
        self.capabilities = None
        self.enc = wire.Encoder(0)
        self.dec = wire.Decoder()
        self._adc = deque(maxlen=4096)
        self._replies = deque(maxlen=64)
        self.latency: deque = deque(maxlen=512)
        self._pings = {}
        self._token = 0
        self.last_status: wire.Status | None = None
        self.nacks: list = []
        self.last_adc: wire.AdcFrame | None = None
        self.serials = None                 # uint64[N] blade serial per channel (0: none), from
        self.blade_events: list = []        # STATUS and the ADC frames' events: (tick, BladeEvent)
        self.skipped = 0
        self.auto_arm = True
        self.rearms = 0
        self._last_arm = 0.0
        self.timeouts = 0
        self.reconnects = 0
        self.port_errors = 0
        self._owe = None                    # u32 tick of the ADC frame the next DAC answers
        self._tick64 = None
        self._frames_since_ping = 0
        self._last_tx = 0.0
        self._last_rx_adc = 0.0
        self._next_reconnect = 0.0
        self._backoff = self.BACKOFF_S[0]
        self._hello_nonce = None
        self._port_error = None
        self.truth = None
        self.stream_divider = None
        self.board_rate_hz = None
        self.frame_rate_hz = None
        self.payload_bytes = {"in": 0, "out": 0}
        self.wire_bytes = {"in": 0, "out": 0}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_params(cls, port, params):
        known = {"baud", "key", "key_id", "truth", "timeout_ms", "ping_every"}
        unknown = set(params) - known
        if unknown:
            raise ValueError(f"serial:// does not take {sorted(unknown)}; it takes {sorted(known)}")
        try:
            kw = {}
            if "baud" in params:
                kw["baudrate"] = int(params["baud"])
            if "key" in params:
                kw["key"] = auth.load_key_file(params["key"])
            if "key_id" in params:
                kw["key_id"] = int(params["key_id"])
            if "truth" in params:
                kw["truth"] = params["truth"]
            if "timeout_ms" in params:
                kw["comm_timeout_s"] = float(params["timeout_ms"]) / 1e3
            if "ping_every" in params:
                kw["ping_every"] = int(params["ping_every"])
        except (ValueError, OSError) as e:
            raise ValueError(f"serial:// option: {e}") from None
        return cls(port, **kw)

    @classmethod
    def from_url(cls, url: str, **kw):
        from hal.backend import parse_url
        scheme, rest, params = parse_url(url)
        if scheme != "serial":
            raise ValueError(f"{url!r} is not a serial:// URL")
        b = cls.from_params(rest, params)
        for k, v in kw.items():
            setattr(b, k, v)
        return b

    # ------------------------------------------------------------------ port
    def _open_port(self):
        try:
            self.ser = serial.serial_for_url(self.port, baudrate=self.baudrate, timeout=0,
                                             write_timeout=2.0)
        except (serial.SerialException, OSError, ValueError) as e:
            self.ser = None
            raise BackendError(f"cannot open {self.port}: {e}") from None
        try:
            self._fileno = self.ser.fileno()
        except Exception:
            self._fileno = None

    def _close_port(self):
        if self.ser is not None:
            try:
                self.ser.close()
            except Exception:
                pass
        self.ser = None
        self._fileno = None

    def _write(self, data: bytes) -> None:
        if self.ser is None:
            raise CommTimeout(f"{self.port}: port closed")
        try:
            self.ser.write(data)
        except (serial.SerialException, OSError) as e:
            self.port_errors += 1
            self._close_port()
            raise CommTimeout(f"{self.port}: write failed: {e}") from None
        self._last_tx = time.perf_counter()

    def _send(self, msg, signer=None) -> int:
        """Frame and send a message; returns its sequence number."""
        seq = self.enc.seq
        frame = self.enc.message(msg, signer)
        self._write(frame)
        return seq

    def _poll(self, timeout: float) -> bool:
        """Wait up to timeout for bytes, read them, dispatch the frames. True if any came."""
        if self.ser is None:
            time.sleep(max(0.0, timeout))
            return False
        try:
            if self._fileno is not None:
                if timeout > 0:
                    select.select([self._fileno], [], [], timeout)
                data = self.ser.read(1 << 16)
            else:
                data = self.ser.read(1 << 16)
                if not data and timeout > 0:
                    time.sleep(min(timeout, 5e-4))
                    data = self.ser.read(1 << 16)
        except (serial.SerialException, OSError) as e:
            self.port_errors += 1
            self._close_port()
            self._port_error = e
            return False
        if not data:
            return False
        for f in self.dec.feed(data):
            self._dispatch(f)
        return True

    def _dispatch(self, f):
        t = f.type
        if t == MsgType.ADC:
            if f.msg.events and self.serials is not None:
                for ev in f.msg.events:             # every frame's events, skipped ones too
                    if ev.ch < self.serials.shape[0]:
                        self.serials[ev.ch] = ev.serial if ev.kind == wire.BladeEventKind.INSERTED else 0
                        self.blade_events.append((f.msg.tick, ev))
            if not f.late:
                self._adc.append(f)
        elif t == MsgType.PONG:
            sent = self._pings.pop(f.msg.token, None)
            if sent is not None:
                ticks = ((f.msg.ticks_done & 0xFFFFFFFF) - f.msg.ref_tick - 1) & 0xFFFFFFFF
                age = None if f.msg.age_us == wire.AGE_UNKNOWN else f.msg.age_us * 1e-6
                self.latency.append(LatencySample(time.perf_counter() - sent, age, ticks))
        elif t == MsgType.STATUS:
            self.last_status = f.msg
            if self.serials is not None and len(f.msg.serials) == self.serials.shape[0]:
                self.serials[:] = f.msg.serials
        elif t == MsgType.CAPS:
            if self._hello_nonce is not None and f.msg.nonce == self._hello_nonce:
                self._set_caps(f.msg)
        elif t in (MsgType.ACK, MsgType.NACK, MsgType.FLASH_DATA):
            if t == MsgType.NACK:
                self.nacks.append(f.msg)
            self._replies.append(f)

    # ------------------------------------------------------------------ session
    def open(self) -> None:
        self._open_port()
        try:
            self._handshake()
            self.serials = np.zeros(self.caps.n_channels, np.uint64)
            self._learn_divider()
            self.status()                          # the blades present now (serials)
        except BaseException:
            self._close_port()
            raise
        if self.truth_path:
            self.truth = TruthReader(self.truth_path, self.caps.n_channels)
        n = self.caps.n_channels
        self._i = np.zeros(n, np.int16)
        self._q = np.zeros(n, np.int16)
        self._flags = np.zeros(n, np.uint32)
        self._truth_mean = np.zeros(n)
        self.truth_msq = np.zeros(n)
        self._in = InFrame(0, self._i, self._q, self._flags,
                           self._truth_mean if self.truth is not None else None)
        self._in.blade_serial = self.serials

    def _hello(self):
        self._token = (self._token + 1) & 0xFFFFFFFF
        self._hello_nonce = int.from_bytes(os.urandom(4), "little")
        self._write(b"\x00")
        self._send(wire.Hello(nonce=self._hello_nonce))

    def _handshake(self):
        self.caps = None
        for _ in range(self.HELLO_TRIES):
            self._hello()
            deadline = time.perf_counter() + self.HELLO_TIMEOUT_S
            while self.caps is None and time.perf_counter() < deadline:
                self._poll(deadline - time.perf_counter())
                if self.ser is None:
                    raise BackendError(f"{self.port}: port failed during HELLO: {self._port_error}")
                nack = next((r for r in self._replies if r.type == MsgType.NACK
                             and r.msg.ref_type == MsgType.HELLO), None)
                if nack is not None:
                    raise BackendError(f"board refused HELLO: {NackReason(nack.msg.reason).name} "
                                       f"(board protocol version {nack.msg.detail})")
            if self.caps is not None:
                return
        raise BackendError(f"no CAPS from a board at {self.port} after {self.HELLO_TRIES} HELLOs "
                           f"({self.HELLO_TIMEOUT_S * 1e3:.0f} ms each): is it powered and running?")

    def _set_caps(self, c: wire.Caps):
        if c.proto_version != wire.PROTOCOL_VERSION:
            raise BackendError(f"board speaks protocol {c.proto_version}, host {wire.PROTOCOL_VERSION}")
        if (c.pzt_bits, c.spool_bits, c.dds_bits, c.adc_bits) != (wire.PZT_BITS, wire.SPOOL_BITS,
                                                                 wire.DDS_BITS, wire.ADC_BITS):
            raise BackendError(f"board converter widths {c.pzt_bits}/{c.spool_bits}/{c.dds_bits}/"
                               f"{c.adc_bits} differ from 20/16/32/16")
        if c.max_frame < wire.wire_len_max(wire.dac_payload_len(c.n_channels)):
            raise BackendError(f"board receive limit {c.max_frame} B is below one DAC frame")
        if self.caps is not None and c.n_channels != self.caps.n_channels:
            raise BackendError(f"board now reports {c.n_channels} channels, was {self.caps.n_channels}")
        self.caps = c
        self.board_rate_hz = float(c.loop_rate_hz)
        self._hello_nonce = None
        self._owe = None
        if self.signer is not None:
            self.signer.advance_to(c.auth_counter)

    def _learn_divider(self, timeout_s: float = 2.0):
        deadline = time.perf_counter() + timeout_s
        prev = None
        seen = []
        while time.perf_counter() < deadline:
            while self._adc:
                f = self._adc.popleft()
                if prev is not None and f.seq == ((prev.seq + 1) & 0xFFFFFFFF):
                    d = (f.msg.tick - prev.msg.tick) & 0xFFFFFFFF
                    if 1 <= d <= 1000:
                        seen.append(d)             # the smallest of three: a frame the board
                        if len(seen) == 3:         # skipped cannot fool it
                            self._set_divider(min(seen))
                            return
                prev = f
            self._heartbeat_if_idle()
            self._poll(0.01)
        raise BackendError(f"board at {self.port} answered HELLO but streams no ADC frames")

    def _set_divider(self, d):
        self.stream_divider = d
        self.frame_rate_hz = self.board_rate_hz / d
        c = self.caps
        self.capabilities = Capabilities(n_channels=c.n_channels, loop_rate_hz=self.frame_rate_hz,
                                         board_serial=c.board_serial,
                                         has_truth=self.truth_path is not None)

    @property
    def comm_timeout_s(self) -> float:
        if self._comm_timeout_s is not None:
            return self._comm_timeout_s
        return max(0.02, 10.0 / self.frame_rate_hz) if self.frame_rate_hz else 0.1

    @property
    def reconnect_after_s(self) -> float:
        if self._reconnect_after_s is not None:
            return self._reconnect_after_s
        return max(0.2, 4 * self.comm_timeout_s)

    @property
    def watchdog_s(self) -> float:
        return (self.caps.watchdog_ms if self.caps else wire.WATCHDOG_MS_DEFAULT) / 1e3

    def close(self) -> None:
        self._close_port()
        if self.truth is not None:
            self.truth.close()
            self.truth = None

    # ------------------------------------------------------------------ the loop
    def _heartbeat_if_idle(self):
        if time.perf_counter() - self._last_tx > self.watchdog_s / 2:
            try:
                self._send(wire.Heartbeat(int(time.monotonic() * 1e3) & 0xFFFFFFFF))
            except CommTimeout:
                pass

    def exchange(self, out: OutFrame) -> InFrame:
        """Send the DAC frame answering the last ADC frame, return the next ADC frame."""
        now = time.perf_counter()
        if self._owe is not None and self.ser is not None:
            n = self.caps.n_channels
            hold = 0
            if out.hold is not None and out.hold.any():
                for c in np.flatnonzero(out.hold):
                    hold |= 1 << int(c)
            try:
                frame = self.enc.dac(self._owe, out.pzt_code, out.spool_code, out.aom_ftw, hold=hold)
                self._write(frame)
                self.payload_bytes["out"] += wire.dac_payload_len(n)
                self.wire_bytes["out"] += len(frame)
                self._frames_since_ping += 1
                if self.ping_every and self._frames_since_ping >= self.ping_every:
                    self._frames_since_ping = 0
                    self.ping_nowait(self._owe)
            except CommTimeout:
                pass
        deadline = now + self.comm_timeout_s
        while True:
            if self._adc:
                return self._take_adc()
            now = time.perf_counter()
            if now >= deadline:
                break
            self._heartbeat_if_idle()
            self._poll(min(deadline - now, self.watchdog_s / 2))
        self.timeouts += 1
        self._maybe_reconnect()
        raise CommTimeout(f"no ADC frame from {self.port} for {self.comm_timeout_s * 1e3:.1f} ms")

    def _maybe_reconnect(self):
        now = time.perf_counter()
        if now - self._last_rx_adc < self.reconnect_after_s or now < self._next_reconnect:
            return
        self._next_reconnect = now + self._backoff
        self._backoff = min(2 * self._backoff, self.BACKOFF_S[1])
        try:
            if self.ser is None:
                self._open_port()
            self.reconnects += 1
            self._hello()
        except (BackendError, CommTimeout):
            pass

    def _take_adc(self) -> InFrame:
        f = self._adc.pop()
        self.skipped += len(self._adc)
        self._adc.clear()
        m = f.msg
        now = time.perf_counter()
        self._last_rx_adc = now
        self._backoff = self.BACKOFF_S[0]
        self._next_reconnect = 0.0
        if self.stream_divider is None:
            self._set_divider(1)
        n = self.caps.n_channels
        if m.i.shape[0] != n:
            raise BackendError(f"ADC frame with {m.i.shape[0]} channels, CAPS said {n}")
        np.copyto(self._i, m.i)
        np.copyto(self._q, m.q)
        over = m.overrange
        if over:
            for c in range(n):
                self._flags[c] = (over >> c) & 1
        elif self._flags.any():
            self._flags[:] = 0
        if m.board_flags & (wire.BoardFlags.SAFE | wire.BoardFlags.WATCHDOG_RAMP) and self.auto_arm \
                and now - self._last_arm > 0.1:
            self._last_arm = now                       # the board gave up on us: re-arm it
            self.rearms += 1
            try:
                self._hello()
            except CommTimeout:
                pass
        t32 = m.tick
        if self._tick64 is None:
            self._tick64 = t32
        else:
            self._tick64 += (t32 - self._tick64) & 0xFFFFFFFF
        self._in.tick = self._tick64
        if self.truth is not None:
            self.truth.read(t32, self._truth_mean, self.truth_msq)
        self._owe = t32
        self.last_adc = m
        self.payload_bytes["in"] += wire.adc_payload_len(n, len(m.events))
        self.wire_bytes["in"] += wire.wire_len_max(wire.adc_payload_len(n, len(m.events)))
        return self._in

    # ------------------------------------------------------------------ latency
    def ping_nowait(self, ref_tick: int | None = None) -> None:
        self._token = (self._token + 1) & 0xFFFFFFFF
        tok = self._token
        if len(self._pings) > 64:
            self._pings.clear()
        self._pings[tok] = time.perf_counter()
        self._send(wire.Ping(tok, (self._owe or 0) if ref_tick is None else ref_tick))

    def latency_summary(self) -> dict:
        """Percentiles of the recent PING samples (s): rtt and loop age."""
        s = list(self.latency)
        if not s:
            return {"n": 0}
        rtt = np.array([x.rtt_s for x in s])
        age = np.array([x.age_s for x in s if x.age_s is not None])
        out = {"n": len(s), "rtt_p50_s": float(np.median(rtt)), "rtt_p99_s": float(np.percentile(rtt, 99))}
        if age.size:
            out.update(age_p50_s=float(np.median(age)), age_p95_s=float(np.percentile(age, 95)),
                       age_max_s=float(age.max()))
        return out

    # ------------------------------------------------------------------ requests
    def _await(self, match, timeout_s: float):
        deadline = time.perf_counter() + timeout_s
        while True:
            for r in list(self._replies):
                if match(r):
                    self._replies.remove(r)
                    return r
            now = time.perf_counter()
            if now >= deadline:
                return None
            self._heartbeat_if_idle()
            self._poll(min(deadline - now, 0.01))
            if self.ser is None:
                raise BackendError(f"{self.port}: port failed: {getattr(self, '_port_error', '')}")

    def status(self, timeout_s: float = 0.5) -> wire.Status:
        """Ask for a STATUS and return it."""
        self.last_status = None
        self._send(wire.StatusRequest())
        deadline = time.perf_counter() + timeout_s
        while self.last_status is None and time.perf_counter() < deadline:
            self._poll(0.01)
        if self.last_status is None:
            raise BackendError(f"no STATUS from {self.port} within {timeout_s * 1e3:.0f} ms")
        return self.last_status

    def command(self, msg, timeout_s: float = 1.0, tries: int = 2) -> wire.Ack:
        """Sign, send and confirm one authenticated command; NACK -> CommandRejected."""
        if self.signer is None:
            raise BackendError(f"{msg.TYPE.name} must be signed: give the board's key "
                               "(serial://PORT?key=PATH, see docs/protocol.md 12.3)")
        msg.pack()                                     # range check before a counter is spent
        for _ in range(tries):
            seq = self._send(msg, self.signer)
            r = self._await(lambda r: r.type in (MsgType.ACK, MsgType.NACK)
                            and r.msg.ref_seq == seq and r.msg.ref_type == msg.TYPE, timeout_s)
            if r is None:
                continue                               # re-signed with a new counter: no replay
            if r.type == MsgType.NACK:
                raise CommandRejected(msg.TYPE, r.msg.reason, r.msg.detail)
            return r.msg
        raise BackendError(f"no answer to {msg.TYPE.name} from {self.port} "
                           f"({tries} tries of {timeout_s * 1e3:.0f} ms)")

    def send_raw(self, frame: bytes) -> None:
        """Put an already framed message on the line (tests: replays and forgeries)."""
        self._write(frame)

    def await_reply(self, ref_type, ref_seq, timeout_s: float = 1.0):
        """The ACK/NACK for (ref_type, ref_seq), or None."""
        return self._await(lambda r: r.type in (MsgType.ACK, MsgType.NACK)
                           and r.msg.ref_seq == ref_seq and r.msg.ref_type == ref_type, timeout_s)

    def configure(self, **fields) -> wire.Ack:
        """Send a CONFIG (fields of wire.Config; unspecified ones take the board's CAPS
        values or the protocol defaults). Out-of-range values raise before sending."""
        base = {}
        if self.caps is not None:
            base = {"watchdog_ms": self.caps.watchdog_ms, "hold_ms": self.caps.hold_ms,
                    "ramp_ms": self.caps.ramp_ms}
        if self.stream_divider is not None:
            base["stream_divider"] = self.stream_divider
        base.update(fields)
        cfg = wire.Config(**base)
        ack = self.command(cfg)
        if self.caps is not None:
            self.caps.watchdog_ms, self.caps.hold_ms, self.caps.ramp_ms = cfg.watchdog_ms, cfg.hold_ms, cfg.ramp_ms
        if "stream_divider" in fields:
            self._adc.clear()
            self._set_divider(cfg.stream_divider)
        return ack

    def override(self, mode, mask, pzt=None, spool=None, dds=None) -> wire.Ack:
        """ACTUATOR_OVERRIDE: FORCE channels in mask to the codes, or RELEASE them."""
        n = self.caps.n_channels
        if mode == wire.OverrideMode.FORCE:
            out = OutFrame(np.asarray(pzt), np.asarray(spool), np.asarray(dds), np.zeros(n, np.uint8))
            out.validate()
            return self.command(wire.ActuatorOverride(mode, mask, out.pzt_code, out.spool_code, out.aom_ftw))
        return self.command(wire.ActuatorOverride(mode, mask))

    # ------------------------------------------------------------------ flash
    def flash_read_slot(self, slot: int, length: int | None = None, timeout_s: float = 1.0) -> bytes:
        """Raw bytes of slot 0, 1 or 0xFF (active) up to length (default: to the slot's end)."""
        out = bytearray()
        while length is None or len(out) < length:
            k = wire.FLASH_CHUNK_MAX if length is None else min(wire.FLASH_CHUNK_MAX, length - len(out))
            seq = self._send(wire.FlashRead(slot, len(out), k))
            r = self._await(lambda r: (r.type == MsgType.FLASH_DATA and r.msg.offset == len(out))
                            or (r.type == MsgType.NACK and r.msg.ref_seq == seq), timeout_s)
            if r is None:
                raise BackendError(f"no FLASH_DATA from {self.port}")
            if r.type == MsgType.NACK:
                if r.msg.reason == NackReason.RANGE and length is None and out:
                    break                                  # the end of the slot
                raise CommandRejected(MsgType.FLASH_READ, r.msg.reason, r.msg.detail)
            out += r.msg.data
        return bytes(out)

    def flash_read_active(self) -> bytes:
        """The active image (header + records)."""
        from hal import flash_image as fi
        head = self.flash_read_slot(wire.FLASH_SLOT_ACTIVE, fi.HEADER_LEN)
        return self.flash_read_slot(wire.FLASH_SLOT_ACTIVE, fi.image_length(head + bytes(1 << 16)))

    def flash_write(self, image: bytes, timeout_s: float = 2.0) -> None:
        """Write an image in FLASH_WRITE chunks; returns after the board verified it."""
        image = bytes(image)
        total = len(image)
        for attempt in range(2):
            try:
                for off in range(0, total, wire.FLASH_CHUNK_MAX):
                    chunk = image[off:off + wire.FLASH_CHUNK_MAX]
                    self.command(wire.FlashWrite(off, total, chunk), timeout_s)
                return
            except CommandRejected as e:
                if e.reason != NackReason.FLASH_OFFSET or attempt:
                    raise
