"""Phase detection: the stable public surface (DESIGN section 7).

    atan2_turns(y, x)          int16/int32 I/Q arrays -> int32 turns (vectorised)
    unwrap_turns(phases)       int32 turns -> int64 (high 32 bits = whole turns)
    return_power(i, q)         I**2 + Q**2, int64 (scalar kernel, njit)
    return_power_array(i, q)   the same over arrays

The per-channel scalar kernels for the tick (`atan2_turns_scalar`,
`unwrap_step`, `wrap_diff`, `is_slip`, `return_power`) and the streaming
forms (`UnwrapState`, `unwrap_into`, `unwrap_stream`, `unwrap_slips_into`,
`unwrap_slips`) are re-exported too; each lives in its own file.
"""
from firmware.atan2 import atan2_turns, atan2_turns_into, atan2_turns_scalar
from firmware.power import return_power, return_power_array, return_power_into
from firmware.unwrap import (UnwrapState, is_slip, unwrap_into, unwrap_slips,
                             unwrap_slips_into, unwrap_step, unwrap_stream,
                             unwrap_turns, wrap_diff)

__all__ = [
    "atan2_turns", "atan2_turns_into", "atan2_turns_scalar",
    "return_power", "return_power_array", "return_power_into",
    "UnwrapState", "is_slip", "unwrap_into", "unwrap_slips", "unwrap_slips_into",
    "unwrap_step", "unwrap_stream", "unwrap_turns", "wrap_diff",
]
