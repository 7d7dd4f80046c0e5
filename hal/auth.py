"""Authenticated commands: HMAC-SHA256 tags with a monotonic counter.

Every command that changes the board's configuration, its actuators or its
flash (CONFIG, ACTUATOR_OVERRIDE, FLASH_WRITE) carries, around its body,

    key_id u8 | counter u64 LE | body ... | tag[16]

    tag = HMAC-SHA256(key, DOMAIN | msg_type u8 | key_id u8 | counter u64 LE | body)[:16]

DOMAIN = b"attobus/cmd/1" separates these MACs from any other use of the key
and fixes the protocol version. All fields before `body` have fixed length, so
the MAC input is unambiguous.

Why 128 bits of tag (the brief allows >= 64): a forger has to get a tag right
by guessing, one frame per guess. 64 bits already puts that beyond any serial
link (2^63 frames at 100 kframe/s is ~3e6 years), but 128 bits keeps the
margin when one key is shared by many boards, when links get faster, and
against any future multi-target attack, and it is what NIST SP 800-107 treats
as full strength for HMAC-SHA256 truncation. It costs 8 extra bytes on rare
command frames only; the per-tick ADC/DAC frames carry no tag.

Replay: the counter is a u64 that the host (`Signer`) increments for every
command; the board (`Verifier`) accepts a command only if its counter is
strictly greater than the last accepted one, and persists the new value
BEFORE the command is acted on, so neither a replay nor a power cycle can
re-open an old counter. The verifier checks, in this order and before any
state change: length -> key id -> tag (hmac.compare_digest, constant time)
-> counter. A replayed frame therefore fails with reason "replay", a forged
one with "bad_tag".

Key provisioning is documented in docs/protocol.md ("Authentication").
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

DOMAIN = b"attobus/cmd/1"
KEY_LEN = 32                      # bytes; HMAC-SHA256 key = one SHA-256 block's worth of entropy
TAG_LEN = 16                      # bytes = 128 bits (see module docstring)
HEAD = struct.Struct("<BQ")       # key_id u8, counter u64
HEAD_LEN = HEAD.size              # 9
OVERHEAD = HEAD_LEN + TAG_LEN     # 25 bytes around each signed body
COUNTER_MAX = (1 << 64) - 1
MAX_KEY_ID = 7                    # key ids 0..7 (CAPS reports them as a u8 bitmask)

REASONS = ("truncated", "unknown_key", "bad_tag", "replay", "store")


class AuthError(Exception):
    """A command failed authentication. `reason` is one of REASONS:

    truncated    payload shorter than key_id + counter + tag
    unknown_key  key id not provisioned on this verifier
    bad_tag      tag does not match (forged, corrupted, wrong key, truncated tag)
    replay       counter not greater than the last accepted one
    store        the counter could not be persisted; the command was not accepted
    """

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def generate_key() -> bytes:
    """A fresh 32-byte key from the OS CSPRNG (secrets.token_bytes)."""
    return secrets.token_bytes(KEY_LEN)


def save_key_file(path, key: bytes) -> None:
    """Write a key as one line of hex to a new file readable by its owner only (0600)."""
    _check_key(key)
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")


def load_key_file(path) -> bytes:
    """Read a hex key file; refuses files readable by group/others and wrong lengths."""
    path = Path(path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"{path}: key file must not be accessible by group/others "
                              f"(mode {stat.filemode(mode)}); chmod 600 it")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError as e:
        raise ValueError(f"{path}: not a hex key: {e}") from None
    _check_key(key)
    return key


def _check_key(key) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LEN:
        raise ValueError(f"key must be {KEY_LEN} bytes, got "
                         f"{len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__}")


def compute_tag(key: bytes, msg_type: int, key_id: int, counter: int, body: bytes) -> bytes:
    """Full MAC computation, truncated to TAG_LEN bytes."""
    mac = hmac.new(key, DOMAIN + struct.pack("<BBQ", msg_type, key_id, counter), hashlib.sha256)
    mac.update(body)
    return mac.digest()[:TAG_LEN]


def split(payload: bytes) -> tuple[int, int, bytes, bytes]:
    """payload -> (key_id, counter, body, tag) without verifying. Raises AuthError('truncated')."""
    if len(payload) < OVERHEAD:
        raise AuthError("truncated", f"{len(payload)} bytes < {OVERHEAD}")
    key_id, counter = HEAD.unpack_from(payload, 0)
    return key_id, counter, bytes(payload[HEAD_LEN:-TAG_LEN]), bytes(payload[-TAG_LEN:])


# ----------------------------------------------------------------------------- counter stores

class MemoryCounterStore:
    """Counter store in RAM (tests, host side without persistence)."""

    def __init__(self, value: int = 0):
        self.value = value

    def load(self) -> int:
        return self.value

    def save(self, value: int) -> None:
        self.value = value


class CallbackCounterStore:
    """Counter store through two callables: load() -> int and save(int)."""

    def __init__(self, load: Callable[[], int], save: Callable[[int], None]):
        self._load, self._save = load, save

    def load(self) -> int:
        return int(self._load())

    def save(self, value: int) -> None:
        self._save(value)


class FileCounterStore:
    """Counter store in a small text file, replaced atomically (write temp, fsync, rename).

    A missing file reads as 0 (fresh board); an unreadable or corrupt file raises
    ValueError instead of silently restarting from 0 (which would re-open old counters).
    """

    def __init__(self, path):
        self.path = Path(path)

    def load(self) -> int:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return 0
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{self.path}: corrupt counter file {text[:40]!r}") from None
        if not 0 <= value <= COUNTER_MAX:
            raise ValueError(f"{self.path}: counter {value} outside u64")
        return value

    def save(self, value: int) -> None:
        d = self.path.parent
        fd, tmp = tempfile.mkstemp(dir=d, prefix=self.path.name + ".")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(f"{value}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


# ----------------------------------------------------------------------------- host side

class Signer:
    """Host side: holds one key and the command counter; `sign` increments it.

    key: 32 bytes. key_id: 0..7, the board slot holding the same key.
    counter: last counter used (the next command uses counter + 1); take it
      from the board's CAPS `auth_counter` after connecting (`advance_to`).
    store: optional counter store; the counter is saved before the signed
      payload is returned, so a restarted host never reuses a counter.
    """

    def __init__(self, key: bytes, key_id: int = 0, counter: int | None = None, store=None):
        _check_key(key)
        if not 0 <= key_id <= MAX_KEY_ID:
            raise ValueError(f"key_id must be in 0..{MAX_KEY_ID}, got {key_id}")
        self._key = bytes(key)
        self.key_id = key_id
        self.store = store
        if counter is None:
            counter = store.load() if store is not None else 0
        if not 0 <= counter < COUNTER_MAX:
            raise ValueError(f"counter must be in 0..2^64-2, got {counter}")
        self.counter = counter

    def advance_to(self, counter: int) -> None:
        """Make sure the next command uses a counter above `counter` (e.g. CAPS auth_counter)."""
        if counter > self.counter:
            self.counter = counter

    def sign(self, msg_type: int, body: bytes) -> bytes:
        """body -> payload `key_id | counter | body | tag` with the next counter value."""
        if self.counter >= COUNTER_MAX:
            raise AuthError("replay", "counter exhausted: provision a new key")
        counter = self.counter + 1
        if self.store is not None:
            self.store.save(counter)
        self.counter = counter
        body = bytes(body)
        return (HEAD.pack(self.key_id, counter) + body
                + compute_tag(self._key, msg_type, self.key_id, counter, body))


# ----------------------------------------------------------------------------- board side

@dataclass
class Verified:
    """An accepted command: its body and the counter that was consumed."""
    key_id: int
    counter: int
    body: bytes


@dataclass
class Verifier:
    """Board side: verifies before any state change, rejects replays, persists the counter.

    keys: {key_id: 32-byte key}. store: counter store (load() -> int, save(int));
    the last accepted counter is read from it at construction, so a Verifier
    re-created after a power cycle rejects every counter it accepted before.
    rejections: count of rejected commands per reason (REASONS).
    """
    keys: dict
    store: object = field(default_factory=MemoryCounterStore)
    rejections: dict = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    accepted: int = 0

    def __post_init__(self):
        for kid, key in self.keys.items():
            if not 0 <= kid <= MAX_KEY_ID:
                raise ValueError(f"key_id must be in 0..{MAX_KEY_ID}, got {kid}")
            _check_key(key)
        self.keys = {k: bytes(v) for k, v in self.keys.items()}
        self.last_counter = int(self.store.load())

    @property
    def key_mask(self) -> int:
        """Provisioned key ids as the u8 bitmask reported in CAPS."""
        m = 0
        for kid in self.keys:
            m |= 1 << kid
        return m

    def _reject(self, reason: str, detail: str = ""):
        self.rejections[reason] += 1
        raise AuthError(reason, detail)

    def verify(self, msg_type: int, payload) -> Verified:
        """Check a signed payload; returns Verified or raises AuthError (counted by reason).

        Nothing changes (counter, store) unless every check passed; the new
        counter is persisted before this returns, i.e. before the caller acts.
        """
        payload = bytes(payload)
        if len(payload) < OVERHEAD:
            self._reject("truncated", f"{len(payload)} bytes < {OVERHEAD}")
        key_id, counter = HEAD.unpack_from(payload, 0)
        key = self.keys.get(key_id)
        if key is None:
            self._reject("unknown_key", f"key id {key_id}")
        body = payload[HEAD_LEN:-TAG_LEN]
        expect = compute_tag(key, msg_type, key_id, counter, body)
        if not hmac.compare_digest(expect, payload[-TAG_LEN:]):
            self._reject("bad_tag")
        if counter <= self.last_counter:
            self._reject("replay", f"counter {counter} <= last accepted {self.last_counter}")
        try:
            self.store.save(counter)
        except Exception as e:           # not persisted -> not accepted
            self._reject("store", repr(e))
        self.last_counter = counter
        self.accepted += 1
        return Verified(key_id, counter, body)
