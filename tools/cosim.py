"""Fused co-simulation: rig and bank in one jitted loop.

Bit-identical to stepping the bank through `hal.sim_backend.SimBackend`
(the same calls in the same order: rig tick with last tick's codes, then
bank tick), without the per-tick Python round trip.

The board reports each channel's blade serial, 0 when no blade is in: the
rig keeps the serial of a removed blade in `blade_serial` and marks it
absent in `present`, so the report is `blade_serial` where `present`.

Channel blocks (threads, `run_blocks`). Channels share nothing but the
rig's common laser stream and its tick and delay-line counters, and the
bank's tick counter: a block of channels [c0, c1) run on its own copies of
the config and state, common fields copied whole, gives the very numbers
the whole bank gives for those channels (each block draws the identical
common laser sequence from its own copy of the common stream).
`split_blocks` cuts the four namedtuples along each field's channel axis
as `LAYOUTS` declares it, checked against the array's shape (a shape alone
is ambiguous: the bank's [4, 5, N] coefficients at N = 5, its [8, N] AOM
ring at N = 8); `join_blocks` writes the blocks back and checks that every
common field came out bit for bit equal in every block. A field without a
declared layout is refused (`ChannelSplitError`): a new field can never be
shared between threads by accident. Each block owns the memory it writes
(copies; the first block the run's own arrays), so no cache line of the
state is written by two threads; the records [T, N] are written in place
at [tick, c0 + c]. The kernel `cosim_block` releases the GIL.

One thing is not per channel and makes a chunk run as one block: a missing
frame, which the bank handles bank-wide.
"""
import hashlib
import pathlib

import numpy as np
from numba import njit

from firmware.bank import tick_batch
from sim_hw.rig import rig_step


@njit(cache=True, nogil=True)
def board_serials(rig_st, out):
    """The serials a board reports: the blade's where one is in, else 0."""
    for c in range(out.shape[0]):
        out[c] = rig_st.blade_serial[c] if rig_st.present[c] != 0 else np.uint64(0)


def _linked_sources_stamp():
    """int (60 bit): digest of every source file the fused kernels link
    (firmware/*.py, sim_hw/*.py)."""
    root = pathlib.Path(__file__).resolve().parent.parent
    h = hashlib.sha1()
    for pkg in ("firmware", "sim_hw"):
        for path in sorted((root / pkg).glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return int(h.hexdigest()[:15], 16)


def _kernels(stamp):
    """(cosim_block, cosim_chunk) compiled for the linked sources of `stamp`.

    numba's on-disk cache keys a function on its own file only, so an edit
    of the bank's tick or of the rig would leave the fused kernels cached
    with the old code. A closure variable is part of the cache key: the
    kernels close over the digest of the sources they link, and any edit
    there compiles them anew. (cosim_chunk calls the module's cosim_block,
    a global: a dispatcher in the closure would key the cache on its pickle,
    which differs from process to process.)"""

    @njit(cache=True, nogil=True)
    def _block(rig_cfg, rig_st, bank_cfg, bank_st, pzt, spool, aom, adc_i, adc_q, truth, serial,
               servo_on, truth_rec, pzt_rec, spool_rec, state_rec, err_rec, faults_rec,
               k0, n_ticks, c0):
        """cosim_block: run n_ticks ticks of a block of channels; record tick
        t of its channel c at [k0 + t, c0 + c] of the full-run records
        [T, N] (truth, codes, state, in-loop error, live fault bits).

        The rig and bank namedtuples and the int32[n] / scratch vectors are
        the block's own (n = its channel count); the records are the whole
        run's, C-contiguous, so one compiled signature serves one block or
        many. pzt, spool, aom carry the codes between calls; serial
        (uint64[n]) is scratch for the board's blade report; servo_on =
        False keeps the actuators at their codes (open loop) while still
        ticking the bank.
        """
        if stamp < 0:                       # never: the digest keys the cache
            return
        # Fields read per channel are unpacked once: a namedtuple field access
        # inside the channel loop costs reference counting every time.
        chan_state, setpoint, phase_acc, live = (bank_st.chan_state, bank_st.setpoint,
                                                 bank_st.phase_acc, bank_st.faults_live)
        # the bank's batch tick on [1, n] views made once: `tick` would make them
        # every tick and pass the namedtuples one call deeper
        n = adc_i.shape[0]
        ai2, aq2, pz2, sp2, ao2, se2 = (adc_i.reshape(1, n), adc_q.reshape(1, n),
                                        pzt.reshape(1, n), spool.reshape(1, n),
                                        aom.reshape(1, n), serial.reshape(1, n))
        for t in range(n_ticks):
            rig_step(rig_cfg, rig_st, pzt, spool, aom, adc_i, adc_q, truth)
            board_serials(rig_st, serial)
            if servo_on:
                tick_batch(bank_cfg, bank_st, ai2, aq2, pz2, sp2, ao2, se2)
            r = k0 + t
            for c in range(truth.shape[0]):
                truth_rec[r, c0 + c] = truth[c]
                pzt_rec[r, c0 + c] = pzt[c]
                spool_rec[r, c0 + c] = spool[c]
                state_rec[r, c0 + c] = chan_state[c]
                err_rec[r, c0 + c] = setpoint[c] - phase_acc[c]
                faults_rec[r, c0 + c] = live[c]

    @njit(cache=True, nogil=True)
    def _chunk(rig_cfg, rig_st, bank_cfg, bank_st, pzt, spool, aom, adc_i, adc_q, truth,
               truth_rec, pzt_rec, spool_rec, state_rec, err_rec, faults_rec, serial, servo_on):
        """cosim_chunk: run truth_rec.shape[0] ticks of every channel;
        records [T, N] of truth, codes, state, in-loop error and live fault
        bits.

        pzt, spool, aom (int32[N]) carry the codes between chunks; serial
        (uint64[N]) is scratch for the board's blade report; servo_on = False
        keeps the actuators at their codes (open loop) while still ticking the
        bank.
        """
        if stamp < 0:
            return
        cosim_block(rig_cfg, rig_st, bank_cfg, bank_st, pzt, spool, aom, adc_i, adc_q, truth,
                    serial, servo_on, truth_rec, pzt_rec, spool_rec, state_rec, err_rec,
                    faults_rec, 0, truth_rec.shape[0], 0)

    return _block, _chunk


LINKED_SOURCES_STAMP = _linked_sources_stamp()
cosim_block, cosim_chunk = _kernels(LINKED_SOURCES_STAMP)


# ----------------------------------------------------------------------------
# channel blocks
# ----------------------------------------------------------------------------

CHANNEL = "channel"            # channel on axis 0 (shape[0] == N)
CHANNEL_LAST = "channel_last"  # channel on the last axis (shape[-1] == N)
# CHANNEL, or (first axis 1 < N) a size-1 placeholder of the other link model: COMMON
CHANNEL_OR_PLACEHOLDER = "channel_or_placeholder"
COMMON = "common"              # one array for all channels: copied whole into every block
SCALAR = "scalar"              # a number, passed unchanged
COUNT = "count"                # the channel count N: the block's count
_C, _L, _P, _M, _S, _N = CHANNEL, CHANNEL_LAST, CHANNEL_OR_PLACEHOLDER, COMMON, SCALAR, COUNT

# Every field of the four namedtuples, by type name. Keep it in step with
# sim_hw.rig and firmware.bank: a field missing here stops a run in blocks
# with ChannelSplitError naming it (tests/test_cosim_parallel.py splits the
# real four), never a silent share between threads.
LAYOUTS = {
    "RigConfig": {
        **dict.fromkeys(["model", "tick_s", "loop_rate_hz", "substeps", "dt_s", "n_segments",
                         "hist_len", "thermal_update_ticks", "pzt_mid", "pzt_max", "spool_mid",
                         "spool_max", "pzt_s_per_code", "spool_s_per_code", "aom_hz_per_ftw",
                         "pzt_ga", "spool_oma", "spool_avg_k", "spool_oma_dt",
                         "optical_period_s", "laser_sigma_rad", "laser_sigma_rad_dt",
                         "temp_ramp_k_per_tick", "temp_rw_k_per_update",
                         "pol_sigma_rad_per_update", "amp_nominal_lsb", "iq_noise_lsb",
                         "adc_max", "adc_min", "group_delay_s_per_m", "tcd_s_per_k_m",
                         "acoustic_s0_per_m", "laser_linewidth_hz"], _S),
        **dict.fromkeys(["pzt_phi", "pzt_gam", "pzt_pa", "pzt_phi_dt", "pzt_gam_dt", "ac_phi",
                         "ac_chol", "ac_lphi", "ac_lchol", "ac_phi_dt", "ac_chol_dt"], _M),
        "n_channels": _N,
        "glitch_key": _C,
    },
    "RigState": {
        **dict.fromkeys(["present", "geometry", "length_m", "tau_s", "tau_rt_s", "ac_amp_s",
                         "tcd_l_s_per_k", "seg_theta_w", "laser_scale_turns", "phi0_turns",
                         "blade_serial", "blade_oneway_offset_s", "loss_db", "faraday",
                         "fade_db", "detune_hz", "asym_s", "pzt_stuck", "spool_stuck",
                         "adc_glitch_remaining", "phase_jump_s", "adc_overrange",
                         "pzt_code_applied", "spool_code_applied", "aom_ftw_applied",
                         "aom_hz_prev", "pzt_x", "pzt_v", "spool_y", "aom_phase_turns",
                         "ac_x", "ac_new", "ac_g", "temp_k", "temp_rate_k_per_tick",
                         "pol_angle_rad", "detune_phase_turns", "jump_offset_s", "amp_key_db",
                         "amp_lsb", "rng"], _C),
        # the laser's stream and line, the tick and delay-line position: common
        **dict.fromkeys(["tick", "rng_common", "laser_draw", "hist_pos", "laser_hist"], _M),
        # the segmented model's per-channel lines: size-1 placeholders in the lumped one
        **dict.fromkeys(["ac_seg", "seg_hist", "act_hist", "rt_D", "rt_f", "rt_w", "fw_D",
                         "fw_f", "fw_w", "act_rt_D", "act_rt_f", "act_fw_D", "act_fw_f"], _P),
    },
    "BankConfig": {
        **dict.fromkeys(["coeffs", "limits", "lad_ch"], _L),       # [stage, k, N], [row, N]
        **dict.fromkeys(["actuator", "ns_c1", "ns_c2", "aom_min", "aom_max", "off_coeffs",
                         "off_limits", "weak_power", "loss_window", "loss_ticks",
                         "step_detect_codes", "adc_overrange", "pzt_sat_code",
                         "spool_sat_code"], _C),
        # hold_coeffs is one biquad ([5]), the blade table is bank-wide
        **dict.fromkeys(["hold_coeffs", "lad_int", "lad_f", "blade_serials",
                         "blade_offsets_fs"], _M),
        **dict.fromkeys(["off_shift", "pzt_alarm", "state_machine", "trim_mask", "aom_kq16",
                         "aom_latency", "aom_average", "err_shift"], _S),
    },
    "BankState": {
        "tick": _M,
        **dict.fromkeys(["hist", "active", "aom_ring", "lad", "cal"], _L),
        **dict.fromkeys(["phase_last", "phase_acc", "setpoint", "mode", "err", "step", "servo_y",
                         "ns_err", "off_sum", "off_hist", "pzt_code", "spool_code", "aom_ftw",
                         "chan_state", "fsm_count", "faults_live", "faults_sticky",
                         "slip_count", "relock_count", "power", "phase_now", "phase_free",
                         "aom_step", "pred", "vel", "aom_off", "aom_mod", "sub", "state_ticks",
                         "blade_serial", "frame_missing", "todo"], _C),
    },
}

class ChannelSplitError(ValueError):
    """A namedtuple field whose channel layout is unknown or does not match its shape."""


def channel_blocks(n, n_blocks):
    """[(c0, c1)] of min(n_blocks, n) contiguous blocks covering 0..n-1, sizes within one."""
    b = max(1, min(int(n_blocks), int(n)))
    edges = [(n * i) // b for i in range(b + 1)]
    return [(edges[i], edges[i + 1]) for i in range(b)]


def field_layouts(nt, n):
    """{field: layout} of namedtuple nt for n channels, every field's layout
    as LAYOUTS declares it and checked against its value; a placeholder
    resolves to CHANNEL or COMMON by its first axis. Raises ChannelSplitError
    naming the field when a layout is missing or does not fit."""
    kind = type(nt).__name__
    table = LAYOUTS.get(kind)
    if table is None:
        raise ChannelSplitError(f"no channel layout is declared for {kind} "
                                f"(tools.cosim.LAYOUTS): cannot split it into channel blocks")
    out = {}
    for name, v in zip(nt._fields, nt):
        lay = table.get(name)
        shape = getattr(v, "shape", None) if isinstance(v, np.ndarray) else None
        what = f"{kind}.{name} " + (f"(shape {shape})" if shape is not None else
                                     f"({type(v).__name__})")
        if lay is None:
            raise ChannelSplitError(f"{what} has no declared channel layout: add it to "
                                    f"tools.cosim.LAYOUTS[{kind!r}] (channel axis first, last, "
                                    f"common, scalar) before a run in channel blocks")
        is_array = shape is not None
        if lay in (_S, _N):
            ok = not is_array and np.ndim(v) == 0
        elif lay == _M:
            ok = is_array
        elif lay == _C:
            ok = is_array and len(shape) >= 1 and shape[0] == n
        elif lay == _L:
            ok = is_array and len(shape) >= 1 and shape[-1] == n
        elif lay == _P:
            ok = is_array and len(shape) >= 1 and shape[0] in (n, 1)
            if ok:
                lay = _C if shape[0] == n else _M
        else:
            ok = False
        if lay == _N and ok and int(v) != n:
            ok = False
        if not ok:
            raise ChannelSplitError(f"{what} does not fit its declared layout {lay!r} "
                                    f"for {n} channels")
        out[name] = lay
    return out


def split_blocks(nt, blocks, n, layouts=None, read_only=False, first_in_place=False):
    """nt cut into one namedtuple per block (c0, c1) of [0, n): channel
    fields sliced on their channel axis and copied (each block owns its
    memory: no cache line is written by two threads), common arrays copied
    whole, scalars passed, the channel count set to the block's.

    read_only=True (a config, which the tick never writes): channel fields
    on the first axis are views and common arrays are shared (threads may
    share what they only read). first_in_place=True: the first block works
    on nt itself (its first-axis channel fields are views, its common arrays
    nt's own), the others on copies; join_blocks with the same flag. Channel-
    last fields are always contiguous copies (numba then compiles no second,
    strided signature)."""
    layouts = layouts or field_layouts(nt, n)
    out = []
    for b, (c0, c1) in enumerate(blocks):
        view = read_only or (first_in_place and b == 0)
        vals = list(nt)
        for j, name in enumerate(nt._fields):
            lay = layouts[name]
            v = vals[j]
            if lay == _C:
                vals[j] = v[c0:c1] if view else v[c0:c1].copy()
            elif lay == _L:
                vals[j] = np.ascontiguousarray(v[..., c0:c1])
            elif lay == _M:
                if not view:
                    vals[j] = v.copy()
            elif lay == _N:
                vals[j] = type(v)(c1 - c0)
        out.append(type(nt)(*vals))
    return out


def join_blocks(nt, parts, blocks, n, layouts=None, first_in_place=False):
    """Write the blocks' arrays back into nt: channel fields into their
    slices, common arrays from the first block after checking they are
    bit for bit equal in every block (ChannelSplitError if not: that field
    is not common after all and the split would not be exact).
    first_in_place: the first block worked on nt itself (split_blocks)."""
    layouts = layouts or field_layouts(nt, n)
    skip = 1 if first_in_place else 0
    for j, name in enumerate(nt._fields):
        lay = layouts[name]
        full = nt[j]
        if lay == _C:
            for (c0, c1), p in zip(blocks[skip:], parts[skip:]):
                full[c0:c1] = p[j]
        elif lay == _L:
            for (c0, c1), p in zip(blocks, parts):
                full[..., c0:c1] = p[j]
        elif lay == _M:
            first = parts[0][j]
            bits = first.tobytes()
            for p in parts[1:]:
                if p[j].tobytes() != bits:
                    raise ChannelSplitError(f"{type(nt).__name__}.{name} is declared common but "
                                            "differs between channel blocks: it depends on the "
                                            "channels, declare its channel axis")
            if not first_in_place:
                full[...] = first


class LayoutCache:
    """field_layouts of the namedtuples of one run, checked once per object:
    a namedtuple cannot change its fields and an array not its shape in
    place, so the layouts hold for as long as the object (kept here) lives;
    a new object (Bank.swap_config) is checked anew."""

    def __init__(self):
        self._seen = {}

    def __call__(self, nt, n):
        hit = self._seen.get(id(nt))
        if hit is None or hit[0] is not nt:
            hit = self._seen[id(nt)] = (nt, field_layouts(nt, n))
        return hit[1]


def run_blocks(pool, blocks, rig_cfg, rig_st, bank_cfg, bank_st, vectors, servo_on, records,
               k0, n_ticks, layouts=None):
    """n_ticks ticks of every channel, block by block, the blocks after the
    first on `pool` (a concurrent.futures executor) and the first on this
    thread; then every block written back into rig_st, bank_st and vectors.
    The first block works in place on the run's arrays (its channels' memory
    is its own for the chunk), the others on copies: half the copying.

    vectors: (pzt, spool, aom, adc_i, adc_q, truth, serial) [N] of the run;
    records: (truth, pzt, spool, state, err, faults) [T, N] of the run, row
    k0 onwards written; layouts: the run's LayoutCache (checks the
    namedtuples once). Runs as one block when a frame is missing (the bank
    treats that bank-wide). Returns the number of blocks the chunk ran in."""
    n = rig_cfg.n_channels
    if len(blocks) == 1 or np.any(bank_st.frame_missing):
        cosim_block(rig_cfg, rig_st, bank_cfg, bank_st, *vectors, servo_on, *records,
                    k0, n_ticks, 0)
        return 1
    layouts = layouts or LayoutCache()
    rig_cfgs = split_blocks(rig_cfg, blocks, n, layouts(rig_cfg, n), read_only=True)
    rig_sts = split_blocks(rig_st, blocks, n, layouts(rig_st, n), first_in_place=True)
    bank_cfgs = split_blocks(bank_cfg, blocks, n, layouts(bank_cfg, n), read_only=True)
    bank_lay = layouts(bank_st, n)
    bank_sts = split_blocks(bank_st, blocks, n, bank_lay, first_in_place=True)
    # the first block runs in place on the run's arrays, the others on copies
    vecs = [[v[c0:c1] if b == 0 else v[c0:c1].copy() for v in vectors]
            for b, (c0, c1) in enumerate(blocks)]
    args = [(rig_cfgs[b], rig_sts[b], bank_cfgs[b], bank_sts[b], *vecs[b], servo_on, *records,
             k0, n_ticks, blocks[b][0]) for b in range(len(blocks))]
    futures = [pool.submit(cosim_block, *a) for a in args[1:]]
    try:
        cosim_block(*args[0])
    finally:
        for f in futures:
            f.result()
    join_blocks(rig_st, rig_sts, blocks, n, layouts(rig_st, n), first_in_place=True)
    join_blocks(bank_st, bank_sts, blocks, n, bank_lay, first_in_place=True)
    for (c0, c1), vb in zip(blocks[1:], vecs[1:]):
        for v, p in zip(vectors, vb):
            v[c0:c1] = p
    return len(blocks)
