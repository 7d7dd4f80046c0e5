"""firmware.channel_fsm: the channel state ladder inside the tick.

Oracles: the rig's ground truth (the true one-way delay at each blade, and
the faults the test itself injects); a synthetic open-loop phase for the
lock detector's counts; the tick's `.py_func` for the integer semantics;
bit-identical reruns for channel independence; a hypothesis
RuleBasedStateMachine over insert, remove, fade, detune, saturation, slips
and comm loss with the invariants of DESIGN section 8.
"""
import hashlib
import pathlib
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from firmware import bank as bank_mod
from firmware.bank import PZT_MID, Bank, BankSettings, BankState, new_state, tick_batch
from firmware.units import ONEWAY_S_PER_PHASE_CODE
from firmware.faults import (ACQUIRING, CALIBRATING, DETECTED, EMPTY, FAULT, FLAG_BITS, HOLDOVER,
                             LOCKED)
from sim_hw.rig import apply_fault, build_rig, insert_blade, remove_blade
from sim_hw.scenarios import draw_blade, get_scenario
from tools import runner
from tools.cosim import cosim_chunk

ROOT = pathlib.Path(__file__).resolve().parents[1]
TURN_S = 2.5852e-15


def test_tick_cache_stamp_covers_the_ladder_sources():
    """numba's cache keys tick_batch on bank.py's content only: the digest of
    the ladder's sources in bank.py must be current, or an edit of the ladder
    would run a stale compiled tick. (The fused co-simulation's kernels key
    their cache on a digest of every firmware and rig source by themselves:
    tools.cosim.LINKED_SOURCES_STAMP.)"""
    h = hashlib.sha1()
    for f in ("firmware/channel_fsm.py", "firmware/calibration.py"):
        h.update((ROOT / f).read_bytes())
    assert bank_mod.LADDER_SOURCES_SHA1 == h.hexdigest()[:16]


@pytest.mark.parametrize("kw, field", [
    (dict(weak_power_codes2=5000.0**2), "weak_power_codes2"),
    (dict(track_power_codes2=3000.0**2), "track_power_codes2"),
    (dict(loss_window_s=0.1e-15), "loss_window_s"),
    (dict(continuity_window_turns=0.5), "continuity_window_turns"),
    (dict(step_keep_turns=0.7), "step_keep_turns"),
    (dict(pzt_sat_frac=1.5), "pzt_sat_frac"),
    (dict(holdover_max_s=0.0), "holdover_max_s"),
    (dict(fault_retry_max_s=1e-3), "fault_retry_max_s"),
    (dict(slip_fault_count=0), "slip_fault_count"),
    (dict(relock_confirm_s=float("nan")), "relock_confirm_s"),
    (dict(pullin_hz=-1.0), "pullin_hz"),
    (dict(gain_ramp_s=True), "gain_ramp_s"),
])
def test_ladder_settings_refused(kw, field):
    with pytest.raises(ValueError, match=field):
        BankSettings(n_channels=2, **kw).build()


# ---------------------------------------------------------------- lock detector counts

AMP = 16000


def iq(turns):
    a = 2 * np.pi * np.asarray(turns, float)
    return (np.round(AMP * np.cos(a)).astype(np.int16), np.round(AMP * np.sin(a)).astype(np.int16))


def test_lock_is_slow_loss_is_fast_and_debounced():
    """Open loop (outputs not applied), one channel: a constant phase locks
    after detect + lock_time (not before); a slow phase ramp that carries
    the error out of the loss window loses lock loss_time after it left (no
    earlier), LOSS_OF_LOCK and CYCLE_SLIP (the recapture gives up the cycle)."""
    s = BankSettings(n_channels=1, detect_time_s=0.1e-3, lock_time_s=1e-3, loss_time_s=0.2e-3,
                     gain_ramp_s=0.1e-3, calibrate="never")
    b = Bank(s)
    n_det, n_lock, n_loss = 10, 100, 20
    states = []
    for k in range(300):
        i, q = iq([0.1])
        b.step(i, q)
        states.append(int(b.state.chan_state[0]))
    k_lock = states.index(LOCKED)
    assert n_det + n_lock - 1 <= k_lock <= n_det + n_lock + 2
    # ramp the phase at 1e-3 turn per tick: the error leaves the 1 fs loss
    # window (0.387 turn) after 387 ticks
    loss_at = None
    for k in range(600):
        i, q = iq([0.1 + 1e-3 * (k + 1)])
        b.step(i, q)
        if b.state.faults_live[0] & FLAG_BITS["LOSS_OF_LOCK"]:
            loss_at = k
            break
        assert b.state.chan_state[0] == LOCKED
    assert loss_at is not None and 387 + n_loss - 2 <= loss_at <= 387 + n_loss + 2
    assert b.state.faults_live[0] & FLAG_BITS["CYCLE_SLIP"]
    assert b.state.chan_state[0] == ACQUIRING and b.state.relock_count[0] == 1


def test_excursion_shorter_than_the_debounce_keeps_lock():
    s = BankSettings(n_channels=1, detect_time_s=0.1e-3, lock_time_s=1e-3, loss_time_s=0.2e-3,
                     calibrate="never", step_detect_s=1e-12)
    b = Bank(s)
    for _ in range(200):
        b.step(*iq([0.0]))
    assert b.state.chan_state[0] == LOCKED
    for k in range(15):                              # 0.15 ms at 0.45 turn: out of the window
        b.step(*iq([0.45 if k < 14 else 0.0]))
    for _ in range(5):
        b.step(*iq([0.0]))
    assert b.state.chan_state[0] == LOCKED and not b.state.faults_sticky[0] & FLAG_BITS["LOSS_OF_LOCK"]


def test_comm_loss_holds_and_relocks():
    """Bank.step_missing: COMM_TIMEOUT live at once, the channel held (HOLDOVER)
    with its outputs frozen; frames back: relock confirmed, cycle kept (a
    brief loss, the phase unchanged)."""
    s = BankSettings(n_channels=2, detect_time_s=0.1e-3, lock_time_s=0.5e-3, calibrate="never")
    b = Bank(s)
    for _ in range(100):
        out = b.step(*iq([0.2, 0.7]))
    held = [o.copy() for o in out]
    for _ in range(5):
        out = b.step_missing()
        assert np.all(b.state.faults_live & FLAG_BITS["COMM_TIMEOUT"])
        assert np.all(b.state.chan_state == HOLDOVER)
        for o, h in zip(out, held):
            np.testing.assert_array_equal(o, h)
    for _ in range(5):
        b.step(*iq([0.2, 0.7]))
    assert np.all(b.state.chan_state == LOCKED)
    live, sticky = b.read_faults()
    assert np.all(sticky & FLAG_BITS["COMM_TIMEOUT"]) and not np.any(sticky & FLAG_BITS["CYCLE_SLIP"])
    assert not np.any(live & FLAG_BITS["COMM_TIMEOUT"])


# ---------------------------------------------------------------- the rig, fused

def rig_run(n, seconds, seed, events=(), scen="rack50", settings=None):
    class Grab:
        def __call__(self, rc, rs, bank):
            self.rs, self.bank = rs, bank
    g = Grab()
    res, rec = runner.run_fused(get_scenario(scen), seconds, n, seed, bank_settings=settings,
                                events=[(0.0, g), *events])
    return g, res, rec


def test_swap_on_one_channel_leaves_the_others_bit_identical():
    """A blade removed and another inserted on channel 1: every other
    channel's codes, states and faults are the same, bit for bit, as in the
    run without the swap."""
    def swap(t_rm, t_in):
        def rm(rc, rs, bank):
            remove_blade(rs, 1)
        def ins(rc, rs, bank):
            insert_blade(rc, rs, 1, 23.0, 2.0, 0x8000_0000_0000_1234, 1e-12)
        return [(t_rm, rm), (t_in, ins)]
    _, _, a = rig_run(3, 0.12, 2)
    _, _, b = rig_run(3, 0.12, 2, swap(0.05, 0.06))
    for ch in (0, 2):
        for name in ("pzt", "spool", "state", "faults", "err"):
            np.testing.assert_array_equal(getattr(a, name)[:, ch], getattr(b, name)[:, ch], err_msg=name)
    assert not np.array_equal(a.state[:, 1], b.state[:, 1])


def test_ladder_visits_its_states_on_insertion():
    """EMPTY -> DETECTED -> CALIBRATING -> ACQUIRING -> LOCKED, in that order,
    with the documented durations (detection 1 ms, settle 0.3 ms, calibration
    40 ms, lock 2 ms after the gain ramp)."""
    g, res, rec = rig_run(1, 0.05, 9)
    seq = [int(s) for s in rec.state[:, 0]]
    order = [s for k, s in enumerate(seq) if k == 0 or s != seq[k - 1]]
    assert order == [EMPTY, DETECTED, CALIBRATING, ACQUIRING, LOCKED]
    first = {s: seq.index(s) for s in order}
    assert first[DETECTED] == 99                      # the 100th tick above threshold
    assert first[CALIBRATING] - first[DETECTED] == 30
    assert 4000 <= first[ACQUIRING] - first[CALIBRATING] <= 4010
    assert 200 <= first[LOCKED] - first[ACQUIRING] <= 215
    # closing the loop with the gain ramp: no excursion of the PZT toward its range
    pzt = np.abs(rec.pzt[first[ACQUIRING]:first[LOCKED] + 300, 0].astype(np.int64) - PZT_MID)
    assert pzt.max() < 0.2 * PZT_MID


def test_fault_back_off_doubles_up_to_its_limit():
    """A blade that always fails calibration (its phase does not answer the
    AOM): FAULT with CAL_FAILED, retried after 1, 2, 4, 4 ms (fault_retry_s
    doubling up to fault_retry_max_s), each retry a new detection and
    calibration; fault_count counts them."""
    s = BankSettings(n_channels=1, calibrate="always", cal_time_s=1e-3, detect_time_s=0.1e-3,
                     settle_time_s=0.1e-3, fault_retry_s=1e-3, fault_retry_max_s=4e-3)
    b = Bank(s)
    states, cal_failed = [], []
    for k in range(3000):
        b.step(*iq([0.3]))
        states.append(int(b.state.chan_state[0]))
        cal_failed.append(bool(b.state.faults_live[0] & FLAG_BITS["CAL_FAILED"]))
    st_ = np.array(states)
    edges = np.flatnonzero(np.diff((st_ == FAULT).astype(int)))
    starts, stops = edges[0::2] + 1, edges[1::2] + 1
    lengths = (stops - starts[:len(stops)]).tolist()
    assert lengths[:4] == [100, 200, 400, 400]
    assert all(cal_failed[k] for k in starts[:4])
    assert b.register("fault_count")[0] == len(starts)


def test_jit_equals_py_func_through_calibration_and_lock():
    """The tick's Python body (Python integers, numpy overflow raising) against
    the compiled tick on I/Q recorded from a rig run through detection,
    calibration and lock (the ladder's own slow path is compiled in both)."""
    scen = get_scenario("rack10")
    rig_cfg, rig_st = build_rig(scen, 2, 5)
    s = replace(runner.default_bank_settings(scen, 2), cal_time_s=2e-3, detect_time_s=0.1e-3,
                lock_time_s=0.2e-3, cal_tolerance=0.5)
    cfg = s.build()
    ref = new_state(cfg)
    n_t = 600
    from sim_hw.rig import rig_step
    from tools.cosim import board_serials
    ai = np.zeros((n_t, 2), np.int16)
    aq = np.zeros((n_t, 2), np.int16)
    ser = np.zeros((n_t, 2), np.uint64)
    outs = [np.zeros((n_t, 2), np.int32) for _ in range(3)]
    codes = [np.full(2, PZT_MID, np.int32), np.full(2, 2**15, np.int32), np.zeros(2, np.int32)]
    truth = np.zeros(2)
    for k in range(n_t):
        rig_step(rig_cfg, rig_st, *codes, ai[k], aq[k], truth)
        board_serials(rig_st, ser[k])
        tick_batch(cfg, ref, ai[k:k + 1], aq[k:k + 1], *(o[k:k + 1] for o in outs), ser[k:k + 1])
        for c, o in zip(codes, outs):
            c[:] = o[k]
    assert LOCKED in ref.chan_state
    st_ = new_state(cfg)
    o2 = [np.zeros((n_t, 2), np.int32) for _ in range(3)]
    with np.errstate(over="raise"):
        tick_batch.py_func(cfg, st_, ai, aq, *o2, ser)
    for x, y in zip(outs, o2):
        np.testing.assert_array_equal(x, y)
    for name in BankState._fields:
        np.testing.assert_array_equal(getattr(st_, name), getattr(ref, name), err_msg=name)


# ---------------------------------------------------------------- state machine over the rig

FAST = dict(cal_time_s=10e-3, cal_tolerance=0.05, lock_time_s=1e-3, fault_retry_s=5e-3,
            fault_retry_max_s=20e-3, holdover_max_s=20e-3, slip_fault_count=1000)


class LadderMachine(RuleBasedStateMachine):
    """Three rack50 channels through random events. After every rule the
    ticks it ran are checked:

    - the codes stay inside the DAC ranges;
    - no channel is LOCKED for longer than the loss debounce with its true
      one-way delay off the lock's reference by more than the loss window
      (the detector's outer window: between it and the lock window is its
      hysteresis band)
      (reference: the truth when the lock was captured; a hold that keeps
      the cycle keeps the reference, so an undetected slip shows as a
      2.585 fs offset; episodes with a detuned return are skipped, their
      truth ramps by design);
    - every injected fault is flagged within its stated latency;
    - the sticky bits are exactly the OR of the live bits since the last read.
    """

    def __init__(self):
        super().__init__()
        self.n = 3
        self.scen = get_scenario("rack50")

    @initialize(seed=st.integers(0, 2**16))
    def setup(self, seed):
        self.rig_cfg, self.rig_st = build_rig(self.scen, self.n, seed)
        s = replace(runner.default_bank_settings(self.scen, self.n), **FAST)
        self.bank = Bank(s)
        self.cfg = self.bank.config
        self.rng = np.random.default_rng(seed)
        n = self.n
        self.codes = [np.full(n, PZT_MID, np.int32), np.full(n, 2**15, np.int32), np.zeros(n, np.int32)]
        self.scratch = (np.zeros(n, np.int16), np.zeros(n, np.int16), np.zeros(n), np.zeros(n, np.uint64))
        self.ref = [None] * n            # truth at the capture of the current lock episode
        self.skip = [False] * n          # episode not checkable (detuned)
        self.out_ticks = [0] * n         # consecutive locked ticks off the reference
        self.prev_state = np.zeros(n, np.uint8)
        self.expect_sticky = np.zeros(n, np.uint32)
        self.pending = []                # (channel, flag, deadline ticks left)
        self.removed = [False] * n
        self.run(0.02)

    # ---------------------------------------------------------------- driving

    def run(self, seconds, missing=False):
        t = max(1, int(round(seconds * 1e5)))
        n = self.n
        rec = dict(truth=np.zeros((t, n)), pzt=np.zeros((t, n), np.int32),
                   spool=np.zeros((t, n), np.int32), state=np.zeros((t, n), np.uint8),
                   err=np.zeros((t, n), np.int64), faults=np.zeros((t, n), np.uint32))
        if missing:
            self.bank.state.frame_missing[:] = 1
        ai, aq, tr, ser = self.scratch
        cosim_chunk(self.rig_cfg, self.rig_st, self.cfg, self.bank.state, *self.codes, ai, aq, tr,
                    rec["truth"], rec["pzt"], rec["spool"], rec["state"], rec["err"], rec["faults"],
                    ser, True)
        self.bank.state.frame_missing[:] = 0
        self.check(rec)
        return rec

    def check(self, rec):
        lw = self.bank.settings.loss_window_s
        debounce = int(self.cfg.loss_ticks[0])
        for c in range(self.n):
            for k in range(rec["state"].shape[0]):
                s = rec["state"][k, c]
                if s == LOCKED and self.prev_state[c] != LOCKED and self.prev_state[c] != HOLDOVER:
                    self.ref[c] = None                        # a new capture
                    self.skip[c] = self.rig_st.detune_hz[c] != 0
                    self.out_ticks[c] = 0
                    self.lock_k = k
                if s == LOCKED and not self.skip[c] and np.isfinite(rec["truth"][k, c]):
                    if self.ref[c] is None:
                        # the truth the setpoint stands for: the truth now plus
                        # the loop's own error now (one-way)
                        self.ref[c] = rec["truth"][k, c] + rec["err"][k, c] * ONEWAY_S_PER_PHASE_CODE
                    if abs(rec["truth"][k, c] - self.ref[c]) > lw:
                        self.out_ticks[c] += 1
                        assert self.out_ticks[c] <= debounce + 20, \
                            (c, k, rec["truth"][k, c] - self.ref[c])
                    else:
                        self.out_ticks[c] = 0
                self.prev_state[c] = s
            self.expect_sticky[c] |= np.bitwise_or.reduce(rec["faults"][:, c])
        assert rec["pzt"].min() >= 0 and rec["pzt"].max() <= 2**20 - 1
        assert rec["spool"].min() >= 0 and rec["spool"].max() <= 2**16 - 1
        assert np.all(np.abs(self.codes[2]) <= self.cfg.aom_max)
        # expected flags within their latencies (flag: one name or a tuple of them)
        still = []
        for c, flag, left in self.pending:
            mask = 0
            for f in (flag if isinstance(flag, tuple) else (flag,)):
                mask |= FLAG_BITS[f]
            hit = np.flatnonzero(rec["faults"][:left, c] & mask)
            if hit.size:
                continue
            assert left > rec["faults"].shape[0], (c, flag, "not flagged in time")
            still.append((c, flag, left - rec["faults"].shape[0]))
        self.pending = still

    def settled(self, c):
        return (self.bank.state.chan_state[c] == LOCKED and not self.removed[c] and
                self.rig_st.detune_hz[c] == 0 and self.rig_st.pzt_stuck[c] == 0)

    # ---------------------------------------------------------------- rules

    @rule(ms=st.integers(1, 30))
    def advance(self, ms):
        self.run(ms * 1e-3)

    @rule(c=st.integers(0, 2))
    def remove(self, c):
        if self.bank.state.chan_state[c] in (LOCKED, HOLDOVER) and not self.removed[c]:
            self.pending.append((c, "LOSS_OF_LOCK", 1))
        remove_blade(self.rig_st, c)
        self.removed[c] = True
        self.run(2e-3)

    @precondition(lambda self: any(self.removed))
    @rule(data=st.data())
    def insert(self, data):
        c = data.draw(st.sampled_from([i for i in range(self.n) if self.removed[i]]))
        insert_blade(self.rig_cfg, self.rig_st, c, **draw_blade(self.scen, self.rng, c))
        self.removed[c] = False
        self.rig_st.detune_hz[c] = 0.0
        self.run(0.03)

    @rule(c=st.integers(0, 2), db=st.sampled_from([10.0, 25.0, 60.0]), us=st.integers(10, 3000))
    def fade(self, c, db, us):
        if self.settled(c) and db == 60.0:
            self.pending.append((c, "WEAK_RETURN", 1))
        apply_fault(self.rig_st, c, "fade", db)
        self.run(us * 1e-6)
        apply_fault(self.rig_st, c, "fade", 0.0)
        self.run(5e-3)

    @rule(c=st.integers(0, 2), hz=st.sampled_from([0.0, 15e3, -20e3]))
    def detune(self, c, hz):
        if self.settled(c) and hz != 0:
            # a settled loop holds on the first step beyond step_detect (5 ticks
            # measured); in its quiet window after a (re)lock (step_recover_s)
            # steps are no events and the loss window catches the beat: the
            # ticks to leave it (3 at 15 kHz) plus loss_ticks
            quiet = self.bank.state.tick[0] < self.bank.register("quiet_until")[c]
            self.pending.append((c, "LOSS_OF_LOCK", 10 + (int(self.cfg.loss_ticks[0]) if quiet else 0)))
        if hz != self.rig_st.detune_hz[c]:
            self.skip[c] = True                       # the truth ramps from now on
        apply_fault(self.rig_st, c, "detune", hz)
        self.run(5e-3)

    @rule(c=st.integers(0, 2))
    def saturate(self, c):
        if self.settled(c):
            # the loop winds the command toward the rail, or loses lock first
            self.pending.append((c, ("PZT_SAT", "LOSS_OF_LOCK"), 2000))
        apply_fault(self.rig_st, c, "pzt_stuck", 1)
        self.run(0.025)
        apply_fault(self.rig_st, c, "pzt_stuck", 0)

    @rule(c=st.integers(0, 2), fs=st.sampled_from([0.16, -0.2, 0.25, 0.45, -0.9]))
    def slip(self, c, fs):
        """A fibre jump of both directions (a round-trip step of fs / 2.585 fs
        turns): taken and corrected inside step_keep (1/8 turn, 0.32 fs),
        declared lost (CYCLE_SLIP) beyond; NONRECIPROCITY either way (above
        step_detect, 0.1 fs, with the loop's in-flight motion of ~0.01 turn
        during the confirmation)."""
        if self.settled(c) and self.bank.state.tick[0] >= self.bank.register("quiet_until")[c]:
            self.pending.append((c, "NONRECIPROCITY", 6))
            if abs(fs) > 0.4:
                self.pending.append((c, "CYCLE_SLIP", 6))
        apply_fault(self.rig_st, c, "phase_jump", fs * 1e-15)
        self.run(3e-3)

    @rule(us=st.integers(10, 80))
    def comm_loss(self, us):
        for c in range(self.n):
            self.pending.append((c, "COMM_TIMEOUT", 1))
        self.run(us * 1e-6, missing=True)
        self.run(2e-3)

    @rule()
    def read(self):
        live, sticky = self.bank.read_faults()
        np.testing.assert_array_equal(sticky, self.expect_sticky)
        assert np.all(self.bank.state.faults_sticky == 0)
        self.expect_sticky[:] = 0

    @invariant()
    def sticky_is_the_or_of_live(self):
        if hasattr(self, "bank"):
            np.testing.assert_array_equal(self.bank.state.faults_sticky, self.expect_sticky)


LadderMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=15, deadline=None)
TestLadder = LadderMachine.TestCase
