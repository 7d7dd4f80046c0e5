"""The emulated link (sim_hw/link.py): pacing arithmetic and exact fault accounting.

The oracle of the fault tests is the host's own receiver (hal.wire.Decoder),
which counts from sequence numbers alone what the link says it did.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hal import wire
from sim_hw.link import (PROFILES, Fault, LinkDirection, frame_rate_for, parse_faults,
                         NICE_RATES_HZ)


def _frames(n, nch=4, seed=0):
    rng = np.random.default_rng(seed)
    enc = wire.Encoder(123)
    return [enc.adc(k, rng.integers(-2000, 2000, nch), rng.integers(-2000, 2000, nch))
            for k in range(n)]


def _run(link, frames, dt=1e-3):
    out = []
    for k, f in enumerate(frames):
        link.submit(f, k * dt)
    link.flush_held(len(frames) * dt)
    for at, data in link.pop_due(math.inf):
        out.append((at, data))
    return out


def test_uart_pacing_and_latency():
    p = PROFILES["uart1m"]
    link = LinkDirection(p)
    a = b"\x01" * 99 + b"\x00"
    link.submit(a, 0.0)
    link.submit(a, 0.0)                       # queued behind the first on the wire
    (t1, _), (t2, _) = link.pop_due(1.0)
    assert t1 == pytest.approx(100 * 10e-6 + 20e-6)
    assert t2 == pytest.approx(200 * 10e-6 + 20e-6)
    assert link.backlog_s(0.0) == pytest.approx(2e-3)
    assert link.pop_due(1.0) == []


def test_usb_delivery_on_microframes():
    link = LinkDirection(PROFILES["usbhs"])
    link.submit(b"\x05" * 199 + b"\x00", 0.0)
    (t, _), = link.pop_due(1.0)
    end = 200 / 35e6 + 50e-6
    assert t == pytest.approx(math.ceil(end / 125e-6) * 125e-6)
    assert t % 125e-6 == pytest.approx(0.0, abs=1e-12) or t % 125e-6 == pytest.approx(125e-6)


def test_frame_rates_for_40_channels():
    dac = wire.wire_len_max(wire.dac_payload_len(40))
    assert dac == 386
    assert frame_rate_for(PROFILES["uart1m"], dac) == 200      # 259 Hz would fill the wire
    assert frame_rate_for(PROFILES["uart12m"], dac) == 2500    # 3109 Hz max, 85 % -> 2643
    assert frame_rate_for(PROFILES["usbhs"], dac) == 10_000    # capped: the host's budget
    for name in ("uart1m", "uart12m"):
        r = frame_rate_for(PROFILES[name], dac)
        assert r * dac <= 0.85 * PROFILES[name].bytes_per_s
        bigger = [x for x in NICE_RATES_HZ if x > r]
        assert bigger[0] * dac > 0.85 * PROFILES[name].bytes_per_s


def test_parse_faults_and_refusals():
    got = parse_faults("garbage@1+0.5:p=0.3, off@2+0.2,drop:p=0.05:dir=down")
    assert [(d, f.kind, f.start_s, f.duration_s) for d, f in got] == [
        ("up", "garbage", 1.0, 0.5), ("both", "off", 2.0, 0.2), ("down", "drop", 0.0, math.inf)]
    assert got[0][1].params == {"p": 0.3, "max_len": 48}
    for bad, match in [("teleport", "unknown link fault"), ("drop:p=2", "probability"),
                       ("drop:q=1", "takes"), ("off@x", "expected"), ("drop:dir=sideways", "dir"),
                       ("intermittent:off_s=1:period_s=0.5", "off_s")]:
        with pytest.raises(ValueError, match=match):
            parse_faults(bad)


def _account(kind, params, n=400, seed=3):
    link = LinkDirection(PROFILES["uart12m"], seed=seed)
    link.add_fault(Fault(kind, 0.05, 0.3, params))
    delivered = _run(link, _frames(n, seed=seed))
    dec = wire.Decoder()
    got = []
    for _, data in delivered:
        got += dec.feed(data)
    return link.counters, link.destroyed, dec.stats, got


@pytest.mark.parametrize("kind,params,counter", [
    ("drop", {"p": 0.2}, "dropped"), ("off", {}, "off_dropped"), ("stuck", {}, "stuck_replaced"),
    ("wrong", {"p": 0.3, "bits": 2}, "flipped"), ("garbage", {"p": 0.3, "max_len": 40}, "garbage_bursts"),
    ("intermittent", {"period_s": 0.02, "off_s": 0.008}, "off_dropped"),
    ("dup", {"p": 0.2}, "duplicated"), ("reorder", {"p": 0.2}, "reordered")])
def test_each_fault_counted_exactly_by_the_receiver(kind, params, counter):
    c, destroyed, s, got = _account(kind, params)
    assert c[counter] > 10                                  # the fault did something
    assert s.lost == destroyed                              # losses counted exactly
    assert s.duplicates == c["duplicated"] + c["stuck_replaced"]
    assert s.reordered == c["reordered"]
    seqs = [f.seq for f in got]
    assert len(set(seqs)) == 400 - destroyed                # every other frame arrived intact
    if kind in ("wrong", "garbage"):
        # resync within one frame: nothing but the hit frame is lost
        assert destroyed == c["flipped"] + c["garbage_destroyed"] <= c["flipped"] + c["garbage_bursts"]
        assert s.rejected >= destroyed


def test_slow_and_delayed_shift_delivery_only():
    fast = _run(LinkDirection(PROFILES["uart1m"]), _frames(50))
    link = LinkDirection(PROFILES["uart1m"])
    link.add_fault(Fault("delayed", 0.0, math.inf, {"extra_s": 5e-3}))
    late = _run(link, _frames(50))
    assert [d for _, d in late] == [d for _, d in fast]
    assert np.allclose([t for t, _ in late], [t + 5e-3 for t, _ in fast])
    link = LinkDirection(PROFILES["uart1m"])
    link.add_fault(Fault("slow", 0.0, math.inf, {"factor": 10.0}))
    slow = _run(link, _frames(50))
    n = len(fast[0][1])
    assert slow[0][0] == pytest.approx(10 * n * 10e-6 + 20e-6)
    assert [t for t, _ in slow] == sorted(t for t, _ in slow)


def test_submit_bytes_cuts_frames_across_chunks():
    link = LinkDirection(PROFILES["pty"])
    fr = _frames(5)
    blob = b"".join(fr)
    for k in range(0, len(blob), 7):
        link.submit_bytes(blob[k:k + 7], 0.0)
    assert [d for _, d in link.pop_due(0.0)] == fr


@settings(max_examples=25)
@given(p_drop=st.floats(0, 0.3), p_dup=st.floats(0, 0.3), p_re=st.floats(0, 0.3),
       p_flip=st.floats(0, 0.3), p_gar=st.floats(0, 0.3), seed=st.integers(0, 2**16))
def test_mixed_faults_accounting(p_drop, p_dup, p_re, p_flip, p_gar, seed):
    link = LinkDirection(PROFILES["uart12m"], seed=seed)
    for kind, p in (("drop", p_drop), ("dup", p_dup), ("reorder", p_re), ("wrong", p_flip),
                    ("garbage", p_gar)):
        link.add_fault(Fault(kind, 0.01, 0.15, {"p": p}))   # the first frame sets the seq base
    dec = wire.Decoder()
    got = []
    for _, data in _run(link, _frames(200, seed=seed)):
        got += dec.feed(data)
    s, c = dec.stats, link.counters
    assert s.lost == link.destroyed
    assert s.duplicates == c["duplicated"]
    assert s.reordered == c["reordered"]
    assert len({f.seq for f in got}) == 200 - link.destroyed
    assert dec.buffered < wire.MAX_WIRE
