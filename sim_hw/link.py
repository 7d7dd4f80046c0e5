"""The emulated serial link of the board emulator: pacing, transport latency, faults.

A `LinkDirection` carries frames one way (board -> host "up", host -> board
"down"). It never touches a file descriptor: the emulator hands it frames with
their time (`submit`), asks when the next one is due (`next_due`) and takes
the bytes that are due (`pop_due`). Time is the emulator's clock in seconds.

Pacing. A frame of n bytes starts on the wire when the wire is free
(`busy_until`), occupies it for n * byte_time_s and is delivered
`latency_s` after its last byte; a link with a delivery quantum (USB: the
125 us microframe) delivers at the next multiple of the quantum. A receiver
only ever uses whole frames, so delivering each frame whole at its
completion time is the same, for the protocol, as delivering its bytes one
by one. `backlog_s(now)` = time the wire is still busy: the board refuses
to queue more (it drops ADC frames before encoding them, counted
tx_dropped) rather than let the latency grow without bound.

Profiles (`PROFILES`; the figures are the model, stated once here):

| name    | byte time            | latency | quantum | what it stands for |
|---------|----------------------|---------|---------|--------------------|
| uart1m  | 10 us (8N1, 1 Mbaud) | 20 us   | -       | MCU UART, DMA, 1 Mbaud |
| uart12m | 0.833 us (12 Mbaud)  | 20 us   | -       | FTDI-class high-speed UART |
| usbhs   | 28.6 ns (35 MB/s)    | 50 us   | 125 us  | USB 2.0 high-speed CDC-ACM bulk |
| pty     | 0                    | 0       | -       | no emulation: as fast as the pseudo-terminal |

Faults (the PX4 failure list plus frame faults), each active over a window
of emulator time, drawn from a seeded generator so a run is repeatable.
Every fault counts exactly what it did (`counters`), so a test can hold the
receiver's loss accounting against it:

| kind | effect | counters |
|---|---|---|
| off | nothing is delivered | off_dropped |
| stuck | each new frame is replaced by the last frame delivered before the fault (same bytes, same seq: a duplicate) | stuck_replaced |
| garbage | with probability p a burst of 1..max_len random bytes goes out before a frame; the frame is destroyed unless the burst ends with 0x00 | garbage_bursts, garbage_bytes, garbage_destroyed |
| wrong | with probability p, 1..bits (default 2) random bits of the frame are flipped (never the delimiter): the frame is destroyed | flipped |
| slow | byte time x factor | |
| delayed | latency + extra_s | |
| intermittent | off for off_s out of every period_s | off_dropped |
| drop | each frame dropped with probability p | dropped |
| dup | each frame sent twice with probability p | duplicated |
| reorder | with probability p a frame is held back and sent after the next one (counted when that one goes out intact) | reordered |

`destroyed` = frames that cannot arrive: off_dropped + stuck_replaced +
dropped + flipped + garbage_destroyed + overflow_frames (a frame that does
not fit the sender's buffer, `max_backlog_bytes` at the current speed, is
refused whole, as a UART driver refuses a write). A receiver that sees a later frame
counts exactly that many lost; reordered frames are counted late, not lost.
A fault hits a frame at most once (a corrupted frame is not also duplicated
or held back). A wrong frame is destroyed with certainty only up to the
CRC's miss rate of structural errors: the default of at most 2 flipped bits
stays inside what docs/protocol.md 15.2 found refused in exhaustive sweeps;
more bits per frame may (rarely) get one through. The generator is seeded,
so a run is repeatable.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LinkProfile", "PROFILES", "Fault", "FAULT_KINDS", "LinkDirection",
           "parse_faults", "frame_rate_for"]


@dataclass(frozen=True)
class LinkProfile:
    """One emulated link speed. byte_time_s: wire time per byte (s), 0 = unpaced;
    latency_s: one-way latency after the last byte (s); quantum_s: delivery
    granularity (s), 0 = none."""
    name: str
    byte_time_s: float
    latency_s: float
    quantum_s: float = 0.0
    description: str = ""

    @property
    def bytes_per_s(self) -> float:
        return math.inf if self.byte_time_s == 0 else 1.0 / self.byte_time_s

    def replace(self, **kw) -> "LinkProfile":
        d = dict(self.__dict__)
        d.update({k: v for k, v in kw.items() if v is not None})
        return LinkProfile(**d)


PROFILES = {
    "uart1m": LinkProfile("uart1m", 10 / 1e6, 20e-6, 0.0, "1 Mbaud UART, 8N1: 100 kB/s"),
    "uart12m": LinkProfile("uart12m", 10 / 12e6, 20e-6, 0.0, "12 Mbaud UART, 8N1: 1.2 MB/s"),
    "usbhs": LinkProfile("usbhs", 1 / 35e6, 50e-6, 125e-6,
                         "USB 2.0 high-speed CDC-ACM: 35 MB/s bulk, 125 us microframes"),
    "pty": LinkProfile("pty", 0.0, 0.0, 0.0, "no emulation: as fast as the pseudo-terminal"),
}

# Frame rates the emulator picks from: divisors of 100 kHz, so a 100 kHz board
# front end decimates to them by a whole stream_divider.
NICE_RATES_HZ = (50, 100, 200, 250, 400, 500, 1000, 2000, 2500, 4000, 5000, 10_000,
                 20_000, 25_000, 50_000, 100_000)


def frame_rate_for(profile: LinkProfile, wire_bytes_per_frame: int, utilisation: float = 0.85,
                   max_rate_hz: float = 10_000.0) -> int:
    """Largest rate of NICE_RATES_HZ at which one frame of wire_bytes_per_frame per tick
    fills at most `utilisation` of the link, capped at max_rate_hz (the host's budget)."""
    cap = utilisation * profile.bytes_per_s / wire_bytes_per_frame
    ok = [r for r in NICE_RATES_HZ if r <= cap and r <= max_rate_hz]
    if not ok:
        raise ValueError(f"{profile.name}: a {wire_bytes_per_frame}-byte frame does not fit "
                         f"{NICE_RATES_HZ[0]} Hz at {100 * utilisation:.0f} % of the link")
    return ok[-1]


FAULT_KINDS = ("off", "stuck", "garbage", "wrong", "slow", "delayed", "intermittent",
               "drop", "dup", "reorder")
_DEFAULTS = {"off": {}, "stuck": {}, "garbage": {"p": 0.2, "max_len": 48},
             "wrong": {"p": 0.2, "bits": 2}, "slow": {"factor": 10.0},
             "delayed": {"extra_s": 5e-3}, "intermittent": {"period_s": 0.05, "off_s": 0.02},
             "drop": {"p": 0.1}, "dup": {"p": 0.1}, "reorder": {"p": 0.1}}


@dataclass
class Fault:
    """One fault: kind (FAULT_KINDS), active for start_s <= t < start_s + duration_s
    (emulator time, s; duration inf = until cleared), params (see _DEFAULTS)."""
    kind: str
    start_s: float = 0.0
    duration_s: float = math.inf
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown link fault {self.kind!r}: kinds are {', '.join(FAULT_KINDS)}")
        unknown = set(self.params) - set(_DEFAULTS[self.kind])
        if unknown:
            raise ValueError(f"fault {self.kind} takes {sorted(_DEFAULTS[self.kind]) or 'no parameters'}, "
                             f"not {sorted(unknown)}")
        p = {**_DEFAULTS[self.kind], **self.params}
        for k, v in p.items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"fault {self.kind}: {k} = {v!r} must be a finite number >= 0")
        if "p" in p and p["p"] > 1:
            raise ValueError(f"fault {self.kind}: p = {p['p']} is a probability (0..1)")
        if self.kind == "intermittent" and not 0 < p["off_s"] <= p["period_s"]:
            raise ValueError("fault intermittent: need 0 < off_s <= period_s")
        if not (self.start_s >= 0 and self.duration_s > 0):
            raise ValueError(f"fault {self.kind}: start_s must be >= 0 and duration_s > 0")
        self.params = p

    def active(self, t: float) -> bool:
        return self.start_s <= t < self.start_s + self.duration_s


def parse_faults(spec: str) -> list[tuple[str, Fault]]:
    """'KIND[@START[+DURATION]][:key=value]...' items, comma separated, -> [(direction, Fault)].

    direction: key dir=up|down|both (default: off and intermittent both, others up).
    Example: 'garbage@1+0.5:p=0.3,off@2+0.2,drop@0:p=0.05:dir=down'.
    """
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        head, *kvs = item.split(":")
        kind, _, when = head.partition("@")
        start, dur = 0.0, math.inf
        try:
            if when:
                a, _, b = when.partition("+")
                start = float(a)
                dur = float(b) if b else math.inf
            params, direction = {}, None
            for kv in kvs:
                k, _, v = kv.partition("=")
                if k == "dir":
                    direction = v
                else:
                    params[k] = float(v)
        except ValueError:
            raise ValueError(f"link fault {item!r}: expected KIND[@START[+DURATION]][:key=value]") from None
        if direction is None:
            direction = "both" if kind in ("off", "intermittent") else "up"
        if direction not in ("up", "down", "both"):
            raise ValueError(f"link fault {item!r}: dir must be up, down or both")
        out.append((direction, Fault(kind, start, dur, params)))
    return out


COUNTERS = ("frames_in", "frames_out", "bytes_out", "off_dropped", "stuck_replaced", "overflow_frames",
            "garbage_bursts", "garbage_bytes", "garbage_destroyed", "flipped", "dropped",
            "duplicated", "reordered", "overflow_bytes")


class LinkDirection:
    """One direction of the emulated link. profile: LinkProfile; seed: fault generator.

    max_backlog_bytes: bytes the sending side may have queued on the wire (a UART
    FIFO / tty buffer); a frame that does not fit is refused whole and counted
    (overflow_frames, overflow_bytes). The board avoids this for its ADC frames
    by checking `backlog_s` first.
    """

    def __init__(self, profile: LinkProfile, seed: int = 0, name: str = "up",
                 max_backlog_bytes: int = 1 << 16):
        self.profile = profile
        self.name = name
        self.rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x11AC, 0 if name == "up" else 1])
        self.faults: list[Fault] = []
        self.busy_until = 0.0
        self.max_backlog_bytes = max_backlog_bytes
        self._queue: deque = deque()            # (deliver_at, bytes), deliver_at non-decreasing
        self._held = None                       # frame held back by "reorder"
        self._last = None                       # last frame delivered (for "stuck")
        self._stuck_frame = None
        self._partial = b""
        self.counters = dict.fromkeys(COUNTERS, 0)

    # -------------------------------------------------------------- faults
    def add_fault(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()
        self._stuck_frame = None

    def _active(self, kind, t):
        if not self.faults:
            return None
        for f in self.faults:
            if f.kind == kind and f.active(t):
                return f.params
        return None

    def is_off(self, t: float) -> bool:
        if not self.faults:
            return False
        if self._active("off", t) is not None:
            return True
        p = self._active("intermittent", t)
        if p is not None:
            f = next(f for f in self.faults if f.kind == "intermittent" and f.active(t))
            return (t - f.start_s) % p["period_s"] >= p["period_s"] - p["off_s"]
        return False

    @property
    def destroyed(self) -> int:
        """Frames that cannot arrive intact (see module docstring)."""
        c = self.counters
        return (c["off_dropped"] + c["stuck_replaced"] + c["dropped"] + c["flipped"]
                + c["garbage_destroyed"] + c["overflow_frames"])

    # -------------------------------------------------------------- timing
    def byte_time(self, t: float) -> float:
        p = self._active("slow", t)
        return self.profile.byte_time_s * (p["factor"] if p else 1.0)

    def latency(self, t: float) -> float:
        p = self._active("delayed", t)
        return self.profile.latency_s + (p["extra_s"] if p else 0.0)

    def backlog_s(self, now: float) -> float:
        """Time the wire stays busy with what was already submitted."""
        return max(0.0, self.busy_until - now)

    def wire_time(self, nbytes: int, t: float) -> float:
        return nbytes * self.byte_time(t)

    def _schedule(self, data: bytes, now: float, frame: bool = True) -> bool:
        """Put data on the wire; False (and counted) if the sender's buffer is full."""
        bt = self.byte_time(now)
        if bt > 0 and self.backlog_s(now) / bt + len(data) > self.max_backlog_bytes:
            # the sending FIFO is full: a UART driver refuses the whole write
            self.counters["overflow_bytes"] += len(data)
            if frame:
                self.counters["overflow_frames"] += 1
            return False
        start = max(now, self.busy_until)
        end = start + len(data) * bt
        self.busy_until = end
        at = end + self.latency(now)
        q = self.profile.quantum_s
        if q > 0:
            at = math.ceil(at / q - 1e-9) * q
        if self._queue and at < self._queue[-1][0]:
            at = self._queue[-1][0]               # FIFO: never overtake a frame on the wire
        self._queue.append((at, data))
        self.counters["frames_out"] += 1
        self.counters["bytes_out"] += len(data)
        return True

    # -------------------------------------------------------------- frames in
    def submit(self, frame: bytes, now: float) -> None:
        """A complete wire frame (0x00 included) handed to the link at time `now`."""
        c = self.counters
        c["frames_in"] += 1
        frame = bytes(frame)
        if self.is_off(now):
            c["off_dropped"] += 1
            return
        if self._active("stuck", now) is not None:
            if self._stuck_frame is None:
                self._stuck_frame = self._last
            if self._stuck_frame is not None:
                c["stuck_replaced"] += 1
                self._schedule(self._stuck_frame, now)
                return
        else:
            self._stuck_frame = None
        p = self._active("drop", now)
        if p is not None and self.rng.random() < p["p"]:
            c["dropped"] += 1
            return
        flipped = False
        p = self._active("wrong", now)
        if p is not None and self.rng.random() < p["p"] and len(frame) > 1:
            b = bytearray(frame)
            nbits = int(self.rng.integers(1, max(1, int(p["bits"])) + 1))
            for k in self.rng.choice((len(b) - 1) * 8, size=nbits, replace=False):
                b[k // 8] ^= 1 << (k % 8)              # never the delimiter
            frame = bytes(b)
            c["flipped"] += 1
            flipped = True
        burst = None
        hit = False
        p = self._active("garbage", now)
        if p is not None and self.rng.random() < p["p"]:
            n = int(self.rng.integers(1, max(1, int(p["max_len"])) + 1))
            burst = self.rng.integers(0, 256, n).astype(np.uint8).tobytes()
            c["garbage_bursts"] += 1
            c["garbage_bytes"] += n
            if burst[-1] != 0 and not flipped:
                hit = True                         # the burst runs into this frame: it is lost
                c["garbage_destroyed"] += 1
        corrupt = flipped or hit
        if not corrupt:
            self._last = frame
        # A fault hits a frame at most once: corrupted frames are neither held back nor
        # duplicated, and a held frame goes out before a corrupted one (no reordering
        # happens unless the frame overtaking it arrives).
        if self._held is not None:
            held, self._held = self._held, None
            if corrupt:
                self._schedule(held, now)
            if burst is not None:
                self._schedule(burst, now, frame=False)
            self._schedule(frame, now)
            if not corrupt:
                self._schedule(held, now)
                c["reordered"] += 1
            return
        if burst is not None:
            self._schedule(burst, now, frame=False)
        p = self._active("reorder", now)
        if not corrupt and p is not None and self.rng.random() < p["p"]:
            self._held = frame
            return
        self._schedule(frame, now)
        p = self._active("dup", now)
        if not corrupt and p is not None and self.rng.random() < p["p"]:
            c["duplicated"] += 1
            self._schedule(frame, now)

    def submit_bytes(self, data: bytes, now: float) -> None:
        """Bytes as read from the port (any chunking): frames are cut at each 0x00 and
        submitted whole; a tail without its 0x00 waits for the next chunk."""
        buf = self._partial + bytes(data)
        start = 0
        while True:
            z = buf.find(0, start)
            if z < 0:
                break
            self.submit(buf[start:z + 1], now)
            start = z + 1
        self._partial = buf[start:]
        if len(self._partial) > self.max_backlog_bytes:          # no delimiter: line noise
            self.counters["overflow_bytes"] += len(self._partial)
            self._partial = b""

    def flush_held(self, now: float) -> None:
        """Send a frame held back by "reorder" (call when the fault ends)."""
        if self._held is not None:
            held, self._held = self._held, None
            self._schedule(held, now)

    # -------------------------------------------------------------- delivery
    def next_due(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def pop_due(self, now: float) -> list[tuple[float, bytes]]:
        """[(deliver_at, bytes)] of every frame due at or before now, in order."""
        out = []
        q = self._queue
        while q and q[0][0] <= now:
            out.append(q.popleft())
        return out

    def pending(self) -> int:
        return len(self._queue)
