"""Streaming phase unwrapper and cycle-slip detector (branch-free).

Phase in: int32 turns (2**32 codes = one turn). Unwrapped phase out: int64
whose high 32 bits count whole turns and low 32 bits are the phase code
(DESIGN section 3). Each step adds the int32-wrapped difference between
consecutive samples, so the unwrapped value follows the shortest path: a
step of up to just under half a turn either way is followed exactly; a true
step of half a turn or more aliases by one whole turn (the cycle slip the
detector below is there to flag).

State (struct of arrays, one entry per stream/channel):
    acc    int64  unwrapped phase of the last sample, codes
    last   int32  last wrapped phase sample, codes
    primed uint8  1 once a sample was seen (gates the slip check only)
    slips  int64  running count of flagged slips
A fresh state (all zero) starts the stream as if the previous sample was 0
in turn 0, so the first output is the first sample sign-extended: the same
start as `unwrap_turns`.

The int64 accumulator wraps modulo 2**64 like the hardware counter would
(2**31 turns, ~5.5 ms of one-way delay at 1550 nm: never reached). Numba
integers wrap, Python integers do not, so every wrap is an explicit mask and
each kernel's `.py_func` returns the same codes.

Slip heuristic (`is_slip`): a sample is flagged when its wrapped step
exceeds a quarter turn (the classic heuristic: the true step was probably
ambiguous) OR exceeds `max_step_codes`, the largest phase change the loop
can make in one tick (rate bound set by the caller, codes per tick). The
unwrapped output is never "corrected": it keeps the shortest-path value and
the flag/count tells the state machine the turn count is suspect.
"""
from typing import NamedTuple

import numpy as np
from numba import njit
from numba.extending import register_jitable

from firmware.units import QUARTER_TURN

_INT64_LOW63 = 0x7FFFFFFFFFFFFFFF
_INT64_MIN = -0x8000000000000000


@njit(cache=True)
def wrap_diff(a, b):
    """a - b wrapped into int32 (codes): the shortest signed step from b to a.

    a, b: integers in int32 range. Returns np.int32 in [-2**31, 2**31 - 1];
    a step of exactly half a turn reads as -2**31.
    """
    d = np.int64(a) - np.int64(b)               # 33 bit
    return np.int32(((d + 0x80000000) & 0xFFFFFFFF) - 0x80000000)


@register_jitable
def wrap_int64(v):
    """Two's-complement wrap into int64 (identity in numba, where int64 adds
    already wrap; masks Python integers in `.py_func` to the same value)."""
    return (v & _INT64_LOW63) + ((v >> 63) & 1) * _INT64_MIN


@njit(cache=True, inline="always")
def unwrap_step(acc, last, phase):
    """One unwrapper step: acc + wrap_diff(phase, last), int64 codes.

    acc: int64 unwrapped phase of `last`; last, phase: int32 codes.
    Returns the unwrapped phase of `phase` (int64, wraps modulo 2**64).
    """
    return wrap_int64(int(acc) + int(wrap_diff(phase, last)))   # int(): Python ints in .py_func


@njit(cache=True, inline="always")
def is_slip(step, max_step_codes):
    """Cycle-slip flag for one wrapped step (int32 codes, from wrap_diff).

    True if |step| > a quarter turn (2**30 codes) or |step| > max_step_codes
    (codes per tick, >= 0; pass 2**31 or more to use the quarter-turn rule
    alone). A step of exactly the bound is not flagged.
    """
    m = abs(np.int64(step))                     # 0 .. 2**31
    return (m > QUARTER_TURN) | (m > max_step_codes)


@njit(cache=True)
def unwrap_into(phase, out, acc, last, primed):
    """Unwrap a block of samples, continuing the stream state.

    phase: int32 (T, N) codes, N channels side by side (C order); out: int64
    (T, N), written. acc, last, primed: state arrays of length N (see module
    doc), updated to the end of the block. T == 0 leaves the state alone.
    Allocates nothing; channels are independent inside a tick (inner loop).
    """
    T = phase.shape[0]
    N = phase.shape[1]
    if N == 1:                                  # single stream: scalar chain
        a = acc[0]
        p = last[0]
        for k in range(T):
            x = phase[k, 0]
            a = unwrap_step(a, p, x)
            p = x
            out[k, 0] = a
        acc[0] = a
        last[0] = p
    else:
        for k in range(T):
            for c in range(N):
                x = phase[k, c]
                a = unwrap_step(acc[c], last[c], x)
                acc[c] = a
                last[c] = x
                out[k, c] = a
    if T > 0:
        for c in range(N):
            primed[c] = 1


@njit(cache=True)
def unwrap_slips_into(phase, out, flags, acc, last, primed, slips, max_step_codes):
    """`unwrap_into` plus cycle-slip detection and counting.

    phase: int32 (T, N) codes; out: int64 (T, N), written; flags: uint8
    (T, N), written 1 where `is_slip` fired, else 0. acc, last, primed,
    slips: state arrays of length N; slips[c] is incremented per flagged
    sample. max_step_codes: int64 (N,), rate bound per channel (codes per
    tick, >= 0). The first sample of an unprimed channel is never flagged
    (there is no previous sample). Returns the number of slips flagged in
    this block (all channels).
    """
    T = phase.shape[0]
    N = phase.shape[1]
    total = 0
    for k in range(T):
        for c in range(N):
            x = phase[k, c]
            step = wrap_diff(x, last[c])
            f = is_slip(step, max_step_codes[c]) & (primed[c] != 0)
            acc[c] = wrap_int64(acc[c] + np.int64(step))
            last[c] = x
            primed[c] = 1
            out[k, c] = acc[c]
            flags[k, c] = f
            slips[c] += f
            total += f
    return total


class UnwrapState(NamedTuple):
    """Unwrapper state for N streams (struct of arrays, see module doc)."""
    acc: np.ndarray      # int64 (N,), codes
    last: np.ndarray     # int32 (N,), codes
    primed: np.ndarray   # uint8 (N,)
    slips: np.ndarray    # int64 (N,)

    @classmethod
    def new(cls, n=1):
        """Fresh (all-zero) state for n streams (default 1)."""
        return cls(np.zeros(n, np.int64), np.zeros(n, np.int32),
                   np.zeros(n, np.uint8), np.zeros(n, np.int64))


def _as_block(phases):
    p = np.asarray(phases)
    if p.dtype != np.int32:
        raise TypeError(f"phases must be int32 codes, got {p.dtype}")
    if p.ndim not in (1, 2):
        raise ValueError("phases must be 1-D (one stream) or 2-D (T, N)")
    p = np.ascontiguousarray(p)
    return p.reshape(-1, 1) if p.ndim == 1 else p


def _out(out, shape, dtype, name):
    """Caller's output array (checked) or a new one; returns (array, 2-D view)."""
    if out is None:
        out = np.empty(shape, dtype)
    elif out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous {np.dtype(dtype).name} array of shape {shape}")
    return out, (out.reshape(-1, 1) if out.ndim == 1 else out)


def _check_state(state, n):
    if state.acc.shape != (n,):
        raise ValueError(f"state holds {state.acc.shape[0]} streams, phases have {n}")


def unwrap_turns(phases):
    """Unwrap int32 phase codes into int64 (high 32 bits = whole turns).

    phases: int32 array, 1-D (one stream) or 2-D (T samples, N channels).
    Starts from acc = first sample sign-extended and adds the int32-wrapped
    difference of each next sample (the streaming `unwrap_into` kernel from
    a fresh state), so `unwrap_turns(x) / 2**32` equals
    `numpy.unwrap(x * 2 pi / 2**32) / (2 pi)` whenever every true step is
    under half a turn. Returns int64 of the same shape.
    """
    block = _as_block(phases)
    st = UnwrapState.new(block.shape[1])
    out, view = _out(None, np.shape(phases), np.int64, "out")
    unwrap_into(block, view, st.acc, st.last, st.primed)
    return out


def unwrap_stream(phases, state, out=None):
    """Unwrap the next block of a stream, continuing `state` (UnwrapState).

    phases: int32 (T,) for a 1-stream state or (T, N) for an N-stream state.
    out: optional int64 array of the same shape (allocated if None).
    Returns out. Chunked calls give the same result as one call.
    """
    block = _as_block(phases)
    _check_state(state, block.shape[1])
    out, view = _out(out, np.shape(phases), np.int64, "out")
    unwrap_into(block, view, state.acc, state.last, state.primed)
    return out


def unwrap_slips(phases, state, max_step_codes, out=None, flags=None):
    """Unwrap the next block and flag cycle slips, continuing `state`.

    phases: int32 (T,) or (T, N); state: UnwrapState with N streams;
    max_step_codes: rate bound, codes per tick (scalar or (N,), >= 0; 2**31
    leaves the quarter-turn rule alone). out / flags: optional int64 / uint8
    arrays shaped like phases. Returns (out, flags, n_slips in this block);
    the running count per stream is state.slips.
    """
    block = _as_block(phases)
    n = block.shape[1]
    _check_state(state, n)
    bound = np.broadcast_to(np.asarray(max_step_codes, np.int64), (n,)).copy()
    if (bound < 0).any():
        raise ValueError("max_step_codes must be >= 0")
    out, oview = _out(out, np.shape(phases), np.int64, "out")
    flags, fview = _out(flags, np.shape(phases), np.uint8, "flags")
    total = unwrap_slips_into(block, oview, fview, state.acc, state.last,
                              state.primed, state.slips, bound)
    return out, flags, int(total)
