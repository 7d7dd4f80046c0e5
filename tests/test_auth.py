"""Authenticated commands: HMAC-SHA256/128 tags, replay protection, persisted counter."""
import hashlib
import hmac
import os
import struct

import pytest
from hypothesis import given, strategies as st

from hal import auth, wire

KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
OTHER = bytes(32)


def oracle_tag(key, msg_type, key_id, counter, body):
    # The MAC input written out from docs/protocol.md, with hashlib/hmac directly.
    msg = b"attobus/cmd/1" + bytes([msg_type, key_id]) + counter.to_bytes(8, "little") + body
    return hmac.new(key, msg, hashlib.sha256).digest()[:16]


def fresh(store=None):
    return auth.Verifier({0: KEY, 3: OTHER}, store or auth.MemoryCounterStore())


def snapshot(v):
    return v.last_counter, v.store.load(), v.accepted


@given(st.binary(max_size=600), st.sampled_from([0x20, 0x21, 0x32]), st.integers(0, 2**64 - 3))
def test_sign_layout_and_verify(body, t, counter):
    s = auth.Signer(KEY, 0, counter)
    p = s.sign(t, body)
    assert len(p) == len(body) + auth.OVERHEAD == len(body) + 25
    assert p[0] == 0 and int.from_bytes(p[1:9], "little") == counter + 1
    assert p[9:-16] == body and p[-16:] == oracle_tag(KEY, t, 0, counter + 1, body)
    v = auth.Verifier({0: KEY}, auth.MemoryCounterStore(counter))
    r = v.verify(t, p)
    assert (r.body, r.counter, v.last_counter, v.store.load()) == (body, counter + 1, counter + 1, counter + 1)


def rejected(v, t, payload, reason):
    before = snapshot(v)
    rej = dict(v.rejections)
    with pytest.raises(auth.AuthError) as e:
        v.verify(t, payload)
    assert e.value.reason == reason
    assert snapshot(v) == before                  # no state change on rejection
    rej[reason] += 1
    assert v.rejections == rej


def test_rejections_by_reason_without_state_change():
    v = fresh()
    s = auth.Signer(KEY, 0)
    good = s.sign(0x20, b"config body")
    v.verify(0x20, good)
    assert v.last_counter == 1
    # replay of an accepted command
    rejected(v, 0x20, good, "replay")
    # forged: one bit of the tag, one bit of the body, one bit of the counter, other type
    for k in (len(good) - 1, 12, 1):
        bad = bytearray(s.sign(0x20, b"config body"))
        bad[k] ^= 0x01
        rejected(v, 0x20, bytes(bad), "bad_tag")
    rejected(v, 0x21, s.sign(0x20, b"config body"), "bad_tag")
    # wrong key under a provisioned id
    rejected(v, 0x20, auth.Signer(OTHER, 0, 100).sign(0x20, b"x"), "bad_tag")
    # key id not provisioned
    rejected(v, 0x20, auth.Signer(KEY, 5, 100).sign(0x20, b"x"), "unknown_key")
    # truncated tag: too short to hold one at all, or shortened (the body's tail is read
    # as tag bytes, so it cannot match)
    p = s.sign(0x20, b"")
    rejected(v, 0x20, p[:-1], "truncated")
    rejected(v, 0x20, p[:10], "truncated")
    p = s.sign(0x20, b"long enough body")
    rejected(v, 0x20, p[:-8], "bad_tag")
    # an old counter with a valid tag
    old = auth.Signer(KEY, 0, 0).sign(0x20, b"new body, old counter")
    rejected(v, 0x20, old, "replay")
    assert v.accepted == 1
    # and a fresh good command still goes through
    assert v.verify(0x20, s.sign(0x20, b"ok")).counter == s.counter


def test_counter_persists_across_restart(tmp_path):
    path = tmp_path / "counter"
    s = auth.Signer(KEY, 0)
    v = fresh(auth.FileCounterStore(path))
    cmds = [s.sign(0x21, bytes([k])) for k in range(5)]
    for c in cmds[:3]:
        v.verify(0x21, c)
    assert path.read_text().strip() == "3"
    v2 = fresh(auth.FileCounterStore(path))       # power cycle: a new verifier from the store
    assert v2.last_counter == 3
    for c in cmds[:3]:
        with pytest.raises(auth.AuthError, match="replay"):
            v2.verify(0x21, c)
    v2.verify(0x21, cmds[4])                      # skipping ahead is fine...
    with pytest.raises(auth.AuthError, match="replay"):
        v2.verify(0x21, cmds[3])                  # ...and closes what it skipped
    assert auth.FileCounterStore(path).load() == 5


def test_callback_store_and_failing_store():
    box = {"v": 7}
    v = auth.Verifier({0: KEY}, auth.CallbackCounterStore(lambda: box["v"], lambda x: box.update(v=x)))
    assert v.last_counter == 7
    v.verify(0x20, auth.Signer(KEY, 0, 7).sign(0x20, b""))
    assert box["v"] == 8

    def broken(_):
        raise OSError("flash worn out")
    v = auth.Verifier({0: KEY}, auth.CallbackCounterStore(lambda: 0, broken))
    with pytest.raises(auth.AuthError, match="store"):
        v.verify(0x20, auth.Signer(KEY, 0).sign(0x20, b""))
    assert v.last_counter == 0 and v.accepted == 0   # not persisted -> not accepted


def test_signer_persists_and_advances(tmp_path):
    st_ = auth.FileCounterStore(tmp_path / "host")
    s = auth.Signer(KEY, 0, store=st_)
    s.sign(0x20, b"")
    s.sign(0x20, b"")
    assert auth.Signer(KEY, 0, store=auth.FileCounterStore(tmp_path / "host")).counter == 2
    s.advance_to(1000)                            # e.g. CAPS auth_counter from the board
    assert struct.unpack_from("<Q", s.sign(0x20, b""), 1)[0] == 1001
    s.advance_to(5)
    assert s.counter == 1001


def test_corrupt_counter_file_is_an_error_not_zero(tmp_path):
    p = tmp_path / "c"
    p.write_text("garbage")
    with pytest.raises(ValueError, match="corrupt"):
        auth.Verifier({0: KEY}, auth.FileCounterStore(p))


def test_key_files(tmp_path):
    k = auth.generate_key()
    assert len(k) == 32 and k != auth.generate_key()
    p = tmp_path / "board.key"
    auth.save_key_file(p, k)
    assert os.stat(p).st_mode & 0o777 == 0o600
    assert auth.load_key_file(p) == k
    os.chmod(p, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        auth.load_key_file(p)
    with pytest.raises(ValueError):
        auth.Signer(b"short")
    with pytest.raises(ValueError):
        auth.Verifier({9: KEY})


def test_signed_config_end_to_end_through_the_wire():
    s = auth.Signer(KEY, 0, 41)
    enc = wire.Encoder()
    cfg = wire.Config(watchdog_ms=25, ramp_ms=2000)
    frame = enc.message(cfg, s)
    f, = wire.Decoder().feed(frame)
    v = auth.Verifier({0: KEY}, auth.MemoryCounterStore(41))
    body = v.verify(f.type, f.msg.payload).body
    got = wire.unpack_body(f.type, body)
    assert (got.watchdog_ms, got.ramp_ms, got.hold_ms) == (25, 2000, wire.HOLD_MS_DEFAULT)
    assert wire.AUTH_NACK["replay"] == wire.NackReason.AUTH_REPLAY
