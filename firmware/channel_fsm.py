"""Per-channel state ladder: a pure scalar kernel evaluated inside the tick.

    (state, count, weak_count, measurements, thresholds)
        -> (state, count, weak_count, mode, raise_bits, action)

The ladder (DESIGN section 4):

  EMPTY --power >= detect for detect_ticks--> ACQUIRING (setpoint captured,
  servo history cleared) --|error| <= window for lock_ticks--> LOCKED
  --|error| > window for loss_ticks--> ACQUIRING (LOSS_OF_LOCK)
  any --power < detect--> actuators held (WEAK_RETURN); for loss_ticks -> EMPTY

Lock detection is count based and hysteretic: lock_ticks (slow) >> loss_ticks
(fast). The kernel touches no arrays: the tick owns all state, which keeps
the channel loop free of per-access reference counting.
"""
import numpy as np
from numba import njit

from firmware.faults import (ACQUIRING, EMPTY, LOCKED, LOSS_OF_LOCK,
                             WEAK_RETURN, CYCLE_SLIP)

MODE_PARK, MODE_RUN, MODE_HOLD = 0, 1, 2
ACT_NONE, ACT_CAPTURE = 0, 1


@njit(cache=True, inline="always")
def fsm_step(s, n, wc, weak, inside, slip, detect_ticks, lock_ticks, loss_ticks):
    """One ladder step. Returns (state, count, weak_count, mode, raise_bits, action)."""
    mode = MODE_RUN
    bits = 0
    action = ACT_NONE
    if s == EMPTY:
        mode = MODE_PARK
        n = 0 if weak else n + 1
        if n >= detect_ticks:
            s = ACQUIRING
            n = 0
            action = ACT_CAPTURE
    elif weak:
        bits |= WEAK_RETURN
        wc += 1
        mode = MODE_HOLD
        if wc >= loss_ticks:
            s = EMPTY
            n = 0
            wc = 0
            mode = MODE_PARK
    else:
        wc = 0
        if s == ACQUIRING:
            n = n + 1 if inside else 0
            if n >= lock_ticks:
                s = LOCKED
                n = 0
        elif s == LOCKED:
            n = 0 if inside else n + 1
            if slip:
                bits |= CYCLE_SLIP
            if n >= loss_ticks:
                bits |= LOSS_OF_LOCK
                s = ACQUIRING
                n = 0
    return s, n, wc, mode, bits, action
