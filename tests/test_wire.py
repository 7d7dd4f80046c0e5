"""Wire codec: fast path vs reference framer, message layouts, Decoder robustness and counters."""
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import crcmod.predefined
from hal import auth, cobs, wire
from hal.wire import MsgType

CRC = crcmod.predefined.mkPredefinedCrcFun("x-25")     # oracle, independent of hal.crc16


def oracle_frame(t, seq, payload):
    # The framing rule of docs/protocol.md, written out with crcmod and the test's own packing.
    body = bytes([1, t]) + seq.to_bytes(4, "little") + len(payload).to_bytes(2, "little") + payload
    return cobs.encode(body + CRC(body).to_bytes(2, "little")) + b"\x00"


def adc_oracle_payload(tick, i, q, flags, over, pres):
    n = len(i)
    return (struct.pack("<IHBBQQ", tick, flags, n, 0, over, pres)
            + np.asarray(i, "<i2").tobytes() + np.asarray(q, "<i2").tobytes())


def dac_oracle_payload(tick, pzt, spool, dds, hold):
    n = len(pzt)
    p24 = b"".join(int(v).to_bytes(3, "little") for v in pzt)
    return (struct.pack("<IBQ", tick, n, hold) + p24 + np.asarray(spool, "<u2").tobytes()
            + np.asarray(dds, "<i4").tobytes())


def rand_adc(rng, n=40):
    return (rng.integers(-32768, 32768, n).astype(np.int16),
            rng.integers(-32768, 32768, n).astype(np.int16))


def rand_dac(rng, n=40):
    return (rng.integers(0, 1 << 20, n).astype(np.uint32), rng.integers(0, 1 << 16, n).astype(np.uint16),
            rng.integers(-2**31, 2**31, n).astype(np.int32))


# ----------------------------------------------------------------------------- encoders

@given(n=st.integers(1, 64), seed=st.integers(0, 2**32 - 1), seq=st.integers(0, 2**32 - 1),
       tick=st.integers(0, 2**32 - 1), flags=st.integers(0, 0xFFFF), zeros=st.booleans())
def test_adc_fast_path_equals_oracle(n, seed, seq, tick, flags, zeros):
    rng = np.random.default_rng(seed)
    i, q = rand_adc(rng, n)
    if zeros:                                     # many zero bytes: many COBS blocks
        i[::2] = 0
        q[:] = 0
    lim = (1 << n) - 1
    over, pres = int(rng.integers(0, 2**63)) & lim, lim
    f = wire.Encoder(seq).adc(tick, i, q, board_flags=flags, overrange=over, presence=pres)
    assert f == oracle_frame(0x10, seq, adc_oracle_payload(tick, i, q, flags, over, pres))
    assert f == wire.encode_frame(MsgType.ADC, seq, wire.pack_adc(tick, i, q, flags, over, pres))
    assert b"\x00" not in f[:-1] and f[-1] == 0
    assert len(f) <= wire.wire_len_max(wire.adc_payload_len(n))


@given(n=st.integers(1, 64), seed=st.integers(0, 2**32 - 1), seq=st.integers(0, 2**32 - 1),
       tick=st.integers(0, 2**32 - 1))
def test_dac_fast_path_equals_oracle(n, seed, seq, tick):
    rng = np.random.default_rng(seed)
    pzt, spool, dds = rand_dac(rng, n)
    pzt[0], spool[-1], dds[0] = (1 << 20) - 1, 0xFFFF, -2**31      # range ends
    hold = int(rng.integers(0, 2**63)) & ((1 << n) - 1)
    f = wire.Encoder(seq).dac(tick, pzt, spool, dds, hold=hold)
    assert f == oracle_frame(0x11, seq, dac_oracle_payload(tick, pzt, spool, dds, hold))
    # other integer dtypes give the same bytes
    f2 = wire.Encoder(seq).dac(tick, pzt.astype(np.int64), spool.astype(np.int32), dds.astype(np.int64),
                               hold=hold)
    assert f2 == f


def test_kernels_equal_py_func():
    rng = np.random.default_rng(3)
    i, q = rand_adc(rng)
    a1, a2 = np.zeros(wire.MAX_FRAME, np.uint8), np.zeros(wire.MAX_FRAME, np.uint8)
    o1, o2 = np.zeros(wire.MAX_WIRE, np.uint8), np.zeros(wire.MAX_WIRE, np.uint8)
    args = (7, 2**32 - 1, 0xABCD, 0xFFFFFFFF, 0xFF, 0x12345678, 0xAB, i, q)
    k1 = wire._adc_kernel(a1, o1, *args)
    k2 = wire._adc_kernel.py_func(a2, o2, *args)
    assert k1 == k2 and np.array_equal(o1, o2)
    pzt, spool, dds = rand_dac(rng)
    args = (2**32 - 1, 5, 0xFFFFFFFF, 0xFF, pzt, spool, dds)
    k1 = wire._dac_kernel(a1, o1, *args)
    k2 = wire._dac_kernel.py_func(a2, o2, *args)
    assert k1 == k2 and np.array_equal(o1[:k1], o2[:k2])
    src = np.frombuffer(bytes(rng.integers(0, 256, 3 * 40 + 5, dtype=np.uint8)), np.uint8)
    u1, u2 = np.zeros(40, np.uint32), np.zeros(40, np.uint32)
    ok1 = wire._u24_kernel(src, 5, 40, u1)
    ok2 = wire._u24_kernel.py_func(src, 5, 40, u2)
    assert ok1 == ok2 and np.array_equal(u1, u2)
    assert [int(v) for v in u1] == [int.from_bytes(src[5 + 3 * c:8 + 3 * c].tobytes(), "little")
                                    for c in range(40)]
    assert ok1 == all(v < 1 << 20 for v in u1)


def test_encoder_sequence_wraps():
    enc = wire.Encoder(2**32 - 2)
    d = wire.Decoder()
    frames = [enc.message(wire.Heartbeat(k)) for k in range(4)]
    out = d.feed(b"".join(frames))
    assert [f.seq for f in out] == [2**32 - 2, 2**32 - 1, 0, 1]
    assert d.stats.lost == d.stats.seq_gaps == 0 and enc.seq == 2


@pytest.mark.parametrize("call,match", [
    (lambda e: e.dac(0, np.full(40, 1 << 20), np.zeros(40, int), np.zeros(40, int)), r"pzt\[0\]=1048576"),
    (lambda e: e.dac(0, np.zeros(40, int), np.full(40, 65536), np.zeros(40, int)), r"spool\[0\]"),
    (lambda e: e.dac(0, np.zeros(40, int), np.zeros(40, int), np.full(40, 2**31)), r"dds\[0\]"),
    (lambda e: e.dac(0, np.zeros(40, int), np.zeros(39, int), np.zeros(40, int)), "39 channels"),
    (lambda e: e.dac(0, np.zeros(40), np.zeros(40, int), np.zeros(40, int)), "integer array"),
    (lambda e: e.dac(-1, np.zeros(4, int), np.zeros(4, int), np.zeros(4, int)), "tick"),
    (lambda e: e.dac(0, np.zeros(4, int), np.zeros(4, int), np.zeros(4, int), hold=16), "hold"),
    (lambda e: e.adc(0, np.full(40, 40000), np.zeros(40, int)), r"i\[0\]=40000"),
    (lambda e: e.adc(0, np.zeros(65, np.int16), np.zeros(65, np.int16)), "channel count"),
    (lambda e: e.adc(1.5, np.zeros(4, np.int16), np.zeros(4, np.int16)), "tick must be an integer"),
    (lambda e: e.adc(0, np.zeros(4, np.int16), np.zeros(4, np.int16), overrange=16), "overrange"),
    (lambda e: e.frame(0x10, b"x" * (wire.MAX_PAYLOAD + 1)), "payload"),
    (lambda e: e.message(wire.Config()), "must be signed"),
])
def test_encoder_refuses_misuse(call, match):
    enc = wire.Encoder(9)
    with pytest.raises(wire.WireUsageError, match=match):
        call(enc)
    assert enc.seq == 9                           # a refused frame consumes no sequence number


def test_efficiency_40_channels():
    rng = np.random.default_rng(1)
    i, q = rand_adc(rng)
    f = wire.Encoder().adc(1, i, q, presence=(1 << 40) - 1)
    p = wire.adc_payload_len(40)
    assert len(f) == wire.wire_len_max(p)         # <= 254 decoded bytes: exactly one COBS byte
    assert (p, len(f)) == (184, 196)
    assert wire.efficiency(p) >= 0.80
    d = wire.dac_payload_len(40)
    assert (d, wire.wire_len_max(d)) == (373, 386) and wire.efficiency(d) >= 0.80
    assert len(wire.Encoder().dac(1, *rand_dac(rng))) <= 386


# ----------------------------------------------------------------------------- message layouts

KEY = bytes(range(32))


def all_messages(rng):
    i, q = rand_adc(rng, 40)
    pzt, spool, dds = rand_dac(rng, 40)
    return [
        wire.Hello(1, 1040, 0xDEADBEEF),
        wire.Caps(board_serial=2**64 - 1, nonce=7, auth_counter=2**40, key_ids=3, tick=2**50),
        wire.Heartbeat(2**32 - 1),
        wire.Status(tick=12345, watchdog_state=wire.WatchdogState.RAMP, board_flags=0x103,
                    counters={k: n * 1000 for n, k in enumerate(wire.STATUS_COUNTERS)},
                    presence=(1 << 40) - 1, serials=tuple(range(1, 41))),
        wire.StatusRequest(),
        wire.Ack(0x20, 99, 5),
        wire.Nack(0x21, 100, wire.NackReason.AUTH_REPLAY, 77),
        wire.AdcFrame(5, i, q, 3, 1, 7, (wire.BladeEvent(2, 1, 2**63 + 5), wire.BladeEvent(39, 2, 0))),
        wire.DacFrame(6, pzt, spool, dds, (1 << 40) - 1),
        wire.FlashRead(wire.FLASH_SLOT_ACTIVE, 4096, 512),
        wire.FlashData(1, 0, bytes(range(200))),
    ]


def same(a, b):
    if type(a) is not type(b):
        return False
    for k, v in vars(a).items():
        w = getattr(b, k)
        if isinstance(v, np.ndarray) or isinstance(w, np.ndarray):
            if not np.array_equal(v, w):
                return False
        elif v != w:
            return False
    return True


def test_every_message_round_trips_through_decoder():
    rng = np.random.default_rng(11)
    msgs = all_messages(rng)
    signer = auth.Signer(KEY, 1)
    signed = [wire.Config(watchdog_ms=20, hold_ms=0, ramp_ms=500, safe_pzt=np.full(40, 1 << 19),
                          safe_spool=np.full(40, 1 << 15), safe_dds=np.zeros(40, int)),
              wire.ActuatorOverride(wire.OverrideMode.FORCE, 0b101, *rand_dac(rng, 3)),
              wire.ActuatorOverride(wire.OverrideMode.RELEASE, 2**64 - 1),
              wire.FlashWrite(0, 1000, b"\xff\x00" * 256)]
    enc = wire.Encoder(100)
    stream = b"".join(enc.message(m) for m in msgs) + b"".join(enc.message(m, signer) for m in signed)
    dec = wire.Decoder()
    out = dec.feed(stream)
    assert dec.stats.frames_ok == len(out) == len(msgs) + len(signed)
    assert dec.stats.rejected == 0
    for m, f in zip(msgs, out):
        assert f.type == m.TYPE and same(m, f.msg), (m, f.msg)
    verifier = auth.Verifier({1: KEY})
    for m, f in zip(signed, out[len(msgs):]):
        assert isinstance(f.msg, wire.Signed) and f.msg.key_id == 1
        v = verifier.verify(f.type, f.msg.payload)
        assert same(m, wire.unpack_body(f.type, v.body))
    assert [f.seq for f in out] == list(range(100, 100 + len(out)))


@pytest.mark.parametrize("t,payload", [
    (MsgType.ADC, struct.pack("<IHBBQQ", 0, 0, 0, 0, 0, 0)),                 # nch = 0
    (MsgType.ADC, struct.pack("<IHBBQQ", 0, 0, 2, 0, 4, 0) + bytes(8)),      # overrange bit 2 of 2 ch
    (MsgType.ADC, struct.pack("<IHBBQQ", 0, 0, 2, 0, 0, 0) + bytes(7)),      # short by one
    (MsgType.ADC, struct.pack("<IHBBQQ", 0, 0, 1, 1, 0, 0) + bytes(4) + struct.pack("<BBQ", 1, 1, 0)),
    (MsgType.DAC, struct.pack("<IBQ", 0, 1, 0) + b"\xff\xff\xff" + bytes(6)),  # pzt above 20 bits
    (MsgType.DAC, struct.pack("<IBQ", 0, 1, 2) + bytes(9)),                   # hold bit above nch
    (MsgType.HELLO, b"\x01"),
    (MsgType.STATUS, bytes(10)),
    (MsgType.CONFIG, bytes(10)),                                              # shorter than auth
    (MsgType.FLASH_READ, struct.pack("<BIH", 0, 0, 0)),                       # zero-length read
])
def test_malformed_payloads_counted_not_delivered(t, payload):
    d = wire.Decoder()
    assert d.feed(oracle_frame(t, 0, payload)) == []
    assert d.stats.malformed == 1 and d.stats.frames_ok == 0 and d.stats.crc_errors == 0
    with pytest.raises(wire.WireFormatError):
        wire.UNPACKERS[t](payload)


def test_header_errors_counted():
    d = wire.Decoder(types={MsgType.ADC, MsgType.HEARTBEAT})
    body = bytes([2, 0x03]) + bytes(4) + (4).to_bytes(2, "little") + bytes(4)      # version 2
    d.feed(cobs.encode(body + CRC(body).to_bytes(2, "little")) + b"\x00")
    d.feed(oracle_frame(0x7E, 1, b""))                                           # unknown type
    d.feed(oracle_frame(MsgType.HELLO, 2, wire.Hello().pack()))                  # not accepted here
    body = bytes([1, 0x03]) + bytes(4) + (5).to_bytes(2, "little") + bytes(4)      # length field lies
    d.feed(cobs.encode(body + CRC(body).to_bytes(2, "little")) + b"\x00")
    s = d.stats
    assert (s.bad_version, s.unknown_type, s.malformed, s.frames_ok) == (1, 2, 4, 0)


def test_feed_misuse_raises_usage_error():
    d = wire.Decoder()
    for bad in ("abc", 5, None, [1, 2]):
        with pytest.raises(wire.WireUsageError):
            d.feed(bad)
    assert d.feed(memoryview(oracle_frame(3, 0, bytes(4))))[0].msg == wire.Heartbeat(0)


# ----------------------------------------------------------------------------- decoder robustness

@given(st.lists(st.binary(max_size=700), max_size=12), st.integers(16, 600))
def test_arbitrary_bytes_never_raise_and_buffer_bounded(chunks, max_wire):
    d = wire.Decoder(max_wire=max_wire)
    for c in chunks:
        d.feed(c)
        assert d.buffered <= max_wire - 1
    s = d.stats
    assert s.bytes_in == sum(map(len, chunks))
    assert s.frames_ok == 0                       # random bytes never pass COBS + CRC + header here


def test_oversize_frame_dropped_and_buffer_bounded():
    d = wire.Decoder(max_wire=300)
    ok = oracle_frame(3, 0, bytes(4))
    assert d.feed(b"\x55" * 10_000) == []
    assert d.buffered == 0 and d.stats.oversize == 1
    for _ in range(50):                           # keeps discarding, never grows, counted once
        d.feed(b"\x55" * 1000)
        assert d.buffered == 0
    assert d.stats.oversize == 1
    out = d.feed(b"\x00" + ok)                    # resync at the 0x00
    assert len(out) == 1 and d.stats.discarded_bytes == 60_001
    big = oracle_frame(wire.MsgType.FLASH_DATA, 1, wire.FlashData(0, 0, bytes(400)).pack())
    ok2 = oracle_frame(3, 2, bytes(4))
    assert d.feed(big + ok2)[0].seq == 2 and d.stats.oversize == 2
    d.feed(big[:200])
    d.feed(big[200:])                             # oversize across two chunks
    assert d.stats.oversize == 3 and d.buffered == 0


frames_st = st.lists(st.tuples(st.binary(max_size=300), st.integers(1, 4)), min_size=1, max_size=8)


@given(frames_st, st.integers(0, 2**32 - 1), st.data())
def test_frames_in_garbage_recovered_within_one_frame(groups, seed, data):
    # stream = garbage_1 + k_1 frames + garbage_2 + k_2 frames + ...; only the first frame
    # after garbage that does not end in 0x00 may be lost (it is glued to the garbage).
    rng = np.random.default_rng(seed)
    enc = wire.Encoder(int(rng.integers(0, 2**32)))
    stream, expect, tick = b"", [], 0
    for garbage, k in groups:
        stream += garbage
        for j in range(k):
            i, q = rand_adc(rng, int(rng.integers(1, 41)))
            f = enc.adc(tick, i, q)
            lost = j == 0 and garbage and garbage[-1] != 0
            if not lost:
                expect.append(tick)
            tick += 1
            stream += f
    # the same stream, cut into random chunks, decodes to the same frames
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    d = wire.Decoder()
    out = []
    for a, b in zip([0] + cuts, cuts + [len(stream)]):
        out += d.feed(stream[a:b])
    got = [f.msg.tick for f in out]
    # a garbage burst may also swallow a frame when the burst itself is long enough to
    # trigger oversize discarding: that is still "within one frame" of the burst
    assert set(got) <= set(range(tick)) and set(expect) - set(got) == set()
    assert d.stats.frames_ok == len(got)


def code_byte_positions(frame: bytes) -> set:
    """Offsets of the COBS code bytes of an encoded frame (walking its block chain)."""
    pos, k = set(), 0
    while k < len(frame) - 1:
        pos.add(k)
        k += frame[k]
    return pos


def bit_error_sweep(frame: bytes):
    """Feed every 1- and 2-bit corruption of `frame` (each copy isolated by a leading 0x00).

    Patterns are split in two classes, each fed to its own Decoder:
    data: both flips hit COBS data bytes and neither makes a 0x00, so the decoded frame
          keeps its length and differs from the original in exactly the flipped bits;
    structural: a flip hits a code byte or the delimiter, or creates a 0x00 (frame split).
    Returns (decoder_data, n_data, decoder_structural, n_structural, delivered).
    """
    base = np.frombuffer(b"\x00" + frame, np.uint8)
    nbits = len(frame) * 8
    byte_of = np.arange(nbits) >> 3
    bit_of = (1 << (np.arange(nbits) & 7)).astype(np.uint8)
    fr = np.frombuffer(frame, np.uint8)
    is_code = np.zeros(len(frame), bool)
    is_code[list(code_byte_positions(frame))] = True
    is_code[-1] = True                                # the delimiter
    dd, ds = wire.Decoder(), wire.Decoder()
    n_data = n_struct = delivered = 0
    for a in range(nbits):
        b = np.arange(a, nbits)                       # b == a: the single-bit error
        rows = np.tile(base, (len(b), 1))
        rows[:, 1 + byte_of[a]] ^= bit_of[a]
        rest = np.arange(1, len(b))
        rows[rest, 1 + byte_of[b[1:]]] ^= bit_of[b[1:]]
        touched = rows[:, 1:]
        zero_made = (touched[:, :-1] == 0).any(axis=1)
        struct_rows = zero_made | is_code[byte_of[a]] | is_code[byte_of[b]]
        data_rows = ~struct_rows
        delivered += len(dd.feed(rows[data_rows].tobytes()))
        delivered += len(ds.feed(rows[struct_rows].tobytes()))
        n_data += int(data_rows.sum())
        n_struct += int(struct_rows.sum())
    delivered += len(ds.feed(b"\x00"))                # ends a copy whose 0x00 was flipped
    assert n_data + n_struct == nbits * (nbits + 1) // 2
    assert fr[-1] == 0
    return dd, n_data, ds, n_struct, delivered


@pytest.mark.parametrize("kind", ["busy", "quiet"])
def test_every_single_and_double_bit_error_rejected(kind):
    rng = np.random.default_rng(2024)
    if kind == "busy":      # random I/Q, 40 blades present, a few flags
        i, q = rand_adc(rng)
        f = wire.Encoder(0x01020304).adc(0x00ABCDEF, i, q, board_flags=0x21, overrange=0b1001,
                                         presence=(1 << 40) - 1)
    else:                   # all-zero I/Q: a COBS code byte every other byte
        f = wire.Encoder(0).adc(0, np.zeros(40, np.int16), np.zeros(40, np.int16))
    assert len(f) == 196 and len(wire.Decoder().feed(b"\x00" + f)) == 1
    dd, n_data, ds, n_struct, delivered = bit_error_sweep(f)
    # 1. nothing corrupted is ever delivered
    assert delivered == 0 and dd.stats.frames_ok == 0 and ds.stats.frames_ok == 0
    # 2. errors confined to data bytes: a 1- or 2-bit error of the decoded frame, which
    #    CRC-16/IBM-SDLC (Hamming distance 4 at this length) always detects: each copy is
    #    exactly one CRC error and nothing else
    s = dd.stats
    assert (s.crc_errors, s.cobs_errors, s.malformed, s.oversize) == (n_data, 0, 0, 0)
    # 3. errors that hit the COBS structure (code byte, delimiter, a new 0x00) can turn into
    #    many decoded bit errors; every copy is still refused and counted, by COBS, CRC or,
    #    for the rare structure that passes the CRC (expected rate about 2^-16), by the
    #    header length / payload layout checks
    s = ds.stats
    assert s.crc_errors + s.cobs_errors + s.malformed >= n_struct
    assert s.malformed * 2**16 <= 8 * n_struct
    assert s.oversize == 0


def test_every_single_bit_error_caught_by_cobs_or_crc():
    rng = np.random.default_rng(5)
    i, q = rand_adc(rng)
    f = wire.Encoder(77).adc(123456, i, q, presence=(1 << 40) - 1)
    for k in range(len(f) * 8):
        w = bytearray(f)
        w[k >> 3] ^= 1 << (k & 7)
        d = wire.Decoder()
        assert d.feed(b"\x00" + bytes(w) + b"\x00") == []
        s = d.stats
        assert s.crc_errors + s.cobs_errors >= 1 and s.malformed == 0 and s.frames_ok == 0


# ----------------------------------------------------------------------------- sequence accounting

def seq_oracle(seqs):
    """Set-based account of a receive order (unwrapped integers)."""
    got, first, top = set(), None, None
    gaps = dup = late = 0
    lates = []
    for s in seqs:
        if first is None:
            first = top = s
            got.add(s)
            lates.append(False)
            continue
        if s in got:
            dup += 1
            continue
        if s > top:
            gaps += s > top + 1
            top = s
            lates.append(False)
        else:
            late += 1
            lates.append(True)
        got.add(s)
    lost = (top - first + 1) - len([s for s in got if first <= s <= top])
    return dict(seq_gaps=gaps, lost=lost, duplicates=dup, reordered=late), lates


@st.composite
def receive_orders(draw):
    n = draw(st.integers(1, 50))
    kept = [s for s in range(n) if not draw(st.booleans()) or s == 0 or draw(st.booleans())]
    order = list(kept)
    for _ in range(draw(st.integers(0, 10))):     # local swaps: reordering within the window
        k = draw(st.integers(0, len(order) - 1))
        j = min(len(order) - 1, k + draw(st.integers(0, 5)))
        order[k], order[j] = order[j], order[k]
    for _ in range(draw(st.integers(0, 5))):      # duplicates of something already sent
        k = draw(st.integers(0, len(order) - 1))
        order.insert(draw(st.integers(k, len(order))), order[k])
    return order


@given(receive_orders(), st.sampled_from([0, 2**32 - 20, 12345]))
def test_sequence_counters_exact(order, start):
    frames = [oracle_frame(MsgType.HEARTBEAT, (start + s) % 2**32, struct.pack("<I", s)) for s in order]
    d = wire.Decoder()
    out = d.feed(b"".join(frames))
    expect, lates = seq_oracle(order)
    got = {k: getattr(d.stats, k) for k in expect}
    assert got == expect
    assert [f.late for f in out] == lates
    assert d.stats.frames_ok == len(out) == len(order) - expect["duplicates"]


def test_sender_restart_and_hello_rebase():
    d = wire.Decoder()
    seqs = [1000, 1001, 1002, 5, 6]               # board reset without a CAPS: jump back > window
    d.feed(b"".join(oracle_frame(3, s, bytes(4)) for s in seqs))
    assert (d.stats.seq_resets, d.stats.lost, d.stats.reordered, d.stats.duplicates) == (1, 0, 0, 0)
    d.feed(oracle_frame(MsgType.CAPS, 77, wire.Caps().pack()))
    d.feed(oracle_frame(3, 78, bytes(4)))
    assert d.stats.seq_resets == 2 and d.stats.lost == 0
    d.feed(oracle_frame(3, 90, bytes(4)))
    assert d.stats.lost == 11 and d.stats.seq_gaps == 1


# ----------------------------------------------------------------------------- the documented examples

def _doc_blocks():
    """Hex lines of the worked examples in docs/protocol.md section 16, as {label: bytes} per block."""
    from pathlib import Path
    text = Path(__file__).resolve().parent.parent.joinpath("docs", "protocol.md").read_text()
    text = text[text.index("## 16. Worked examples"):]
    blocks = []
    for chunk in text.split("```")[1::2]:
        d = {}
        for line in chunk.strip().splitlines():
            label, *hexes = line.split()
            d[label] = bytes.fromhex("".join(hexes))
        blocks.append(d)
    return blocks


def test_worked_examples_in_protocol_doc():
    adc, hb, cfg = _doc_blocks()
    f = wire.Encoder(1).adc(1000, np.array([1000, -1000], np.int16), np.array([-2, 32767], np.int16),
                            overrange=0b10, presence=0b11)
    assert f == adc["wire"] == oracle_frame(0x10, 1, adc["payload"])
    assert adc["header"] + adc["payload"] + adc["crc16"] == cobs.decode(f[:-1])
    assert CRC(adc["header"] + adc["payload"]) == int.from_bytes(adc["crc16"], "little")
    assert wire.Encoder(0x12345678).message(wire.Heartbeat(1)) == hb["wire"]
    key = bytes(range(32))
    assert wire.Config().pack() == cfg["body"]
    assert auth.Signer(key, 0, 0).sign(MsgType.CONFIG, cfg["body"]) == cfg["payload"]
    assert cfg["payload"][-16:] == __import__("hmac").new(key, cfg["macin"], "sha256").digest()[:16]
    assert wire.Encoder(2).message(wire.Config(), auth.Signer(key, 0, 0)) == cfg["wire"]
    f, = wire.Decoder().feed(cfg["wire"])
    assert auth.Verifier({0: key}).verify(f.type, f.msg.payload).body == cfg["body"]
