"""Return power of the heterodyne beat: I**2 + Q**2 in ADC codes squared.

Bit budget: for int16 I/Q each square is at most 2**30 ((-32768)**2), the
sum at most 2**31: fits uint32 and int64 with room. The kernel also takes
int32-range I/Q (e.g. decimated sums): each square is at most 2**62, the
sum at most 2**63, which is one past INT64_MAX and reached only at
I = Q = -2**31. That single input saturates to INT64_MAX (2**63 - 1, low by
one part in 2**63); every other int32-range input is exact. Weak-return
detection compares this against a threshold in the same units, so the
saturation can never hide a fault.
"""
import numpy as np
from numba import njit

_INT64_MAX = 0x7FFFFFFFFFFFFFFF


@njit(cache=True, inline="always")
def return_power(i, q):
    """I**2 + Q**2 as int64 (ADC codes squared).

    i, q: integers in int32 range (int16 I/Q is the normal case). Exact,
    except (-2**31, -2**31), which saturates to 2**63 - 1.
    """
    i = np.int64(i)
    q = np.int64(q)
    i2 = i * i                                  # <= 2**62
    q2 = q * q                                  # <= 2**62
    return i2 + min(q2, _INT64_MAX - i2)        # no overflow: saturates at 2**63 - 1


@njit(cache=True)
def return_power_into(i, q, out):
    """out[k] = return_power(i[k], q[k]) over 1-D arrays (no allocation)."""
    for k in range(out.shape[0]):
        out[k] = return_power(i[k], q[k])
    return out


def return_power_array(i, q):
    """Vectorised return power: integer arrays (broadcast) -> int64 array.

    i, q: integer arrays or scalars in int32 range (int16 I/Q normally;
    int64 input is range-checked, ValueError if outside int32; floats raise
    TypeError). Returns int64 of the broadcast shape (np.int64 for scalars).
    """
    arrs = []
    for name, a in (("i", i), ("q", q)):
        a = np.asarray(a)
        if a.dtype.kind not in "iu":
            raise TypeError(f"return_power_array: {name} must be integer, got {a.dtype}")
        if a.dtype.itemsize > 4 or a.dtype == np.uint32:
            if a.size and (a.min() < -(1 << 31) or a.max() > (1 << 31) - 1):
                raise ValueError(f"return_power_array: {name} out of int32 range")
            a = a.astype(np.int32)
        arrs.append(a)
    ib, qb = np.broadcast_arrays(*arrs)
    shape = ib.shape
    out = np.empty(ib.size, np.int64)
    return_power_into(np.ascontiguousarray(ib).reshape(-1),
                      np.ascontiguousarray(qb).reshape(-1), out)
    if len(shape) == 0:
        return out[0]
    return out.reshape(shape)
