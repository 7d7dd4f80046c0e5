"""The fused co-simulation in channel blocks on threads (tools.cosim.run_blocks)
equals the single-threaded run array for array: every record, the final
rig and bank state, the results and the event report.

Oracles: the single-threaded run itself (threads=1, one block: the path
tests/test_closed_loop.py proves identical to stepping the bank through
the sim:// Backend), numpy for the block cuts.
"""
from collections import namedtuple

import numpy as np
import pytest

from firmware.faults import FLAG_BITS, LOCKED
from sim_hw.rig import build_rig
from sim_hw.scenarios import get_scenario
from tools import cosim, runner
from tools.inject import parse_inject

RECORDS = ("truth", "pzt", "spool", "state", "err", "faults")


class Grab:
    """A t = 0 event that keeps the run's rig and bank (the final state after the run)."""

    def __call__(self, rig_cfg, rig_st, bank):
        self.rig_cfg, self.rig_st, self.bank = rig_cfg, rig_st, bank


def run(scen, seconds, n, seed, threads, spec=None):
    g = Grab()
    events = [(0.0, g)] + (parse_inject(spec, n, seconds) if spec else [])
    res, rec = runner.run_fused(scen, seconds, n, seed, events=events, threads=threads)
    return res, rec, g


def assert_same_namedtuple(a, b):
    assert type(a) is type(b)
    for name, x, y in zip(a._fields, a, b):
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, name
            np.testing.assert_array_equal(x, y, err_msg=f"{type(a).__name__}.{name}")
            assert x.tobytes() == y.tobytes(), name              # bit for bit (-0.0, NaN payloads)
        else:
            assert x == y, name


def assert_identical(one, two):
    """threads=1 against threads=2: records, final state, results, events."""
    (r1, rec1, g1), (r2, rec2, g2) = one, two
    for name in RECORDS:
        a, b = getattr(rec1, name), getattr(rec2, name)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b, err_msg=name)       # NaN == NaN here
        assert a.tobytes() == b.tobytes(), name
    assert_same_namedtuple(g1.rig_st, g2.rig_st)
    assert_same_namedtuple(g1.rig_cfg, g2.rig_cfg)
    assert_same_namedtuple(g1.bank.state, g2.bank.state)
    assert_same_namedtuple(g1.bank.config, g2.bank.config)
    d1, d2 = r1.as_dict(), r2.as_dict()
    d1.pop("realtime_factor"), d2.pop("realtime_factor")
    assert d1 == d2


# ---------------------------------------------------------------- identity

@pytest.mark.parametrize("seed", [1, 2])
def test_rack10_ten_channels_two_threads_equal_one(seed):
    scen = get_scenario("rack10")
    one = run(scen, 0.2, 10, seed, threads=1)
    two = run(scen, 0.2, 10, seed, threads=2)
    assert_identical(one, two)
    # the run did something worth comparing: every channel locked on both blocks
    assert np.all(one[1].state[-1] == LOCKED)


def test_hotswap_with_its_blade_events_two_threads_equal_one():
    scen = get_scenario("hotswap").replace(hotswap_mean_interval_s=0.04, hotswap_out_min_s=0.05,
                                           hotswap_out_max_s=0.15, hotswap_start_s=0.05)
    one = run(scen, 0.5, 8, 3, threads=1)
    two = run(scen, 0.5, 8, 3, threads=2)
    assert_identical(one, two)
    ev = one[0].events
    kinds = {(e["kind"], e["ch"] >= 4) for e in ev}
    # removals and insertions on both blocks (channels 0-3 and 4-7)
    assert {("remove", False), ("remove", True), ("insert", False), ("insert", True)} <= kinds, ev
    assert np.isnan(one[1].truth).any()                          # a slot stood empty


def test_injected_faults_two_threads_equal_one(monkeypatch):
    """Faults on both blocks, among them ADC glitches of one channel of the
    second block and of every channel: each channel's garbage key is its own
    (sim_hw.frontend.channel_garbage_keys), so every chunk runs in blocks."""
    scen = get_scenario("rack10")
    spec = ("adc_glitch ch=8 t=60ms dur=300us; fade ch=2 t=80ms dur=20ms db=30; "
            "phase_jump ch=6 t=90ms fs=3; adc_glitch ch=all t=120ms dur=50us; "
            "pzt_stuck ch=7 t=140ms dur=10ms")
    one = run(scen, 0.2, 10, 4, threads=1, spec=spec)
    calls = []                          # (first tick, ticks, c0, channels) of every kernel call
    real = cosim.cosim_block

    def spy(*a):
        calls.append((a[-3], a[-2], a[-1], a[4].shape[0]))
        return real(*a)

    monkeypatch.setattr(cosim, "cosim_block", spy)
    two = run(scen, 0.2, 10, 4, threads=2, spec=spec)
    assert_identical(one, two)
    # both glitches ran in blocks of 5 channels, like every other chunk
    assert (6000, 2000, 5, 5) in calls and (12000, 2001, 5, 5) in calls, calls
    assert all(c[3] == 5 for c in calls if c[1] > 0)
    rec = one[1]
    over = FLAG_BITS["ADC_OVERRANGE"]
    # the glitches happened: channel 8 from 60 ms, channels of both blocks from 120 ms
    assert np.any(rec.faults[6000:6040, 8] & over) and not np.any(rec.faults[5000:6000, 8] & over)
    hit = [bool(np.any(rec.faults[12000:12010, c] & over)) for c in range(10)]
    assert any(hit[:5]) and any(hit[5:]), hit


def test_odd_count_and_one_channel():
    scen = get_scenario("rack10")
    assert_identical(run(scen, 0.1, 7, 5, threads=1), run(scen, 0.1, 7, 5, threads=2))
    assert_identical(run(scen, 0.1, 1, 5, threads=1), run(scen, 0.1, 1, 5, threads=2))
    # more threads than channels: one channel per block
    assert_identical(run(scen, 0.05, 3, 6, threads=1), run(scen, 0.05, 3, 6, threads=5))


def test_longhaul_segmented_model_splits_too():
    """The segmented model's common laser line and delay-line position are
    common fields: every block draws the same line."""
    scen = get_scenario("longhaul")
    assert_identical(run(scen, 0.05, 3, 2, threads=1), run(scen, 0.05, 3, 2, threads=2))


def test_default_threads():
    assert runner.default_threads(1) == 1 and runner.default_threads(7) == 1
    import os
    many = len(os.sched_getaffinity(0)) >= 2
    assert runner.default_threads(40) == (2 if many else 1)
    with pytest.raises(ValueError, match="threads"):
        runner.run_fused(get_scenario("rack10"), 0.001, 2, 0, threads=0)


# ---------------------------------------------------------------- the split itself

def test_channel_blocks_cover_every_channel_once():
    for n in (1, 2, 7, 10, 40):
        for b in (1, 2, 3, 8):
            blocks = cosim.channel_blocks(n, b)
            assert len(blocks) == min(n, b)
            cover = np.concatenate([np.arange(c0, c1) for c0, c1 in blocks])
            np.testing.assert_array_equal(cover, np.arange(n))
            sizes = [c1 - c0 for c0, c1 in blocks]
            assert max(sizes) - min(sizes) <= 1


def test_split_cuts_the_declared_axis_and_join_restores():
    """Every field of the four namedtuples, 7 channels in 2 blocks: a channel
    field's block is its slice on the channel axis (first or last), a common
    one is whole; join writes back exactly what the blocks hold."""
    scen = get_scenario("rack10")
    rig_cfg, rig_st = build_rig(scen, 7, 1)
    bank = runner.Bank(runner.default_bank_settings(scen, 7))
    blocks = cosim.channel_blocks(7, 2)
    rng = np.random.default_rng(0)
    for nt in (rig_cfg, rig_st, bank.config, bank.state):
        lay = cosim.field_layouts(nt, 7)
        parts = cosim.split_blocks(nt, blocks, 7)
        for (c0, c1), p in zip(blocks, parts):
            for name, full, part in zip(nt._fields, nt, p):
                if lay[name] == cosim.CHANNEL:
                    np.testing.assert_array_equal(part, full[c0:c1])
                    assert part.base is None                       # owned, not a view
                elif lay[name] == cosim.CHANNEL_LAST:
                    np.testing.assert_array_equal(part, full[..., c0:c1])
                    assert part.flags.c_contiguous
                elif lay[name] == cosim.COMMON:
                    np.testing.assert_array_equal(part, full)
                elif lay[name] == cosim.COUNT:
                    assert part == c1 - c0
        if nt is rig_cfg or nt is bank.config:
            continue
        # new values in every channel field of the blocks -> joined into place
        want = {}
        for name, full in zip(nt._fields, nt):
            if lay[name] in (cosim.CHANNEL, cosim.CHANNEL_LAST):
                want[name] = rng.integers(0, 2, full.shape).astype(full.dtype)
                for (c0, c1), p in zip(blocks, parts):
                    w = want[name]
                    src = w[c0:c1] if lay[name] == cosim.CHANNEL else w[..., c0:c1]
                    getattr(p, name)[...] = src
        cosim.join_blocks(nt, parts, blocks, 7)
        for name, v in want.items():
            np.testing.assert_array_equal(getattr(nt, name), v, err_msg=name)
    # first_in_place: the first block is the run's own memory, the others copies
    parts = cosim.split_blocks(bank.state, blocks, 7, first_in_place=True)
    assert np.shares_memory(parts[0].phase_acc, bank.state.phase_acc)
    assert parts[0].tick is bank.state.tick and parts[1].tick is not bank.state.tick
    assert not np.shares_memory(parts[1].phase_acc, bank.state.phase_acc)
    assert not np.shares_memory(parts[0].lad, bank.state.lad)          # channel-last: a copy
    parts[0].phase_acc[:] = 5
    parts[1].phase_acc[:] = 6
    parts[0].lad[:] = 7
    cosim.join_blocks(bank.state, parts, blocks, 7, first_in_place=True)
    np.testing.assert_array_equal(bank.state.phase_acc, [5] * 3 + [6] * 4)      # blocks of 3, 4
    assert np.all(bank.state.lad[:, :3] == 7) and not np.any(bank.state.lad[:, 3:] == 7)
    # the lumped rig's segmented placeholders are common, the per-channel ones channel
    lay = cosim.field_layouts(rig_st, 7)
    assert lay["seg_hist"] == cosim.COMMON and lay["rng"] == cosim.CHANNEL
    assert cosim.field_layouts(build_rig(get_scenario("longhaul"), 3, 1)[1], 3)["seg_hist"] == \
        cosim.CHANNEL


def test_split_refuses_an_unknown_layout():
    Fake = namedtuple("FakeState", ["x"])
    with pytest.raises(cosim.ChannelSplitError, match="no channel layout is declared for Fake"):
        cosim.split_blocks(Fake(np.zeros(4)), [(0, 2), (2, 4)], 4)
    # a known type with a field nobody declared: named, never shared silently
    fields = list(runner.Bank(runner.BankSettings()).state._fields) + ["new_register"]
    BankState = namedtuple("BankState", fields)
    st = runner.Bank(runner.BankSettings()).state
    n = st.phase_acc.shape[0]
    grown = BankState(*st, np.zeros(n, np.int64))
    with pytest.raises(cosim.ChannelSplitError, match=r"BankState\.new_register .*no declared"):
        cosim.split_blocks(grown, cosim.channel_blocks(n, 2), n)
    # a declared field whose shape does not fit its layout
    bad = st._replace(lad=np.zeros((n + 1, 34), np.int64))
    with pytest.raises(cosim.ChannelSplitError, match=r"BankState\.lad .*'channel_last'"):
        cosim.field_layouts(bad, n)
    bad = st._replace(tick=5)
    with pytest.raises(cosim.ChannelSplitError, match=r"BankState\.tick \(int\)"):
        cosim.field_layouts(bad, n)


def test_join_refuses_a_common_field_that_differs_between_blocks():
    st = runner.Bank(runner.BankSettings()).state
    n = st.phase_acc.shape[0]
    blocks = cosim.channel_blocks(n, 2)
    parts = cosim.split_blocks(st, blocks, n)
    parts[1].tick[0] += 1
    with pytest.raises(cosim.ChannelSplitError, match=r"BankState\.tick is declared common"):
        cosim.join_blocks(st, parts, blocks, n)
