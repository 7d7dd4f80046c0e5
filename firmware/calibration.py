"""Round-trip delay of a link from AOM frequency steps (a pure primitive).

The AOM at the MCU is double-passed: a DDS offset df turns the measured
round-trip phase by 2 Phi(t) - Phi-delayed terms, Phi = integral of df. Per
tick j of the bank (one sample of the tick-averaged front end, df
piecewise constant per tick), for a link whose round trip tau_rt is shorter
than the tick (lumped link, DESIGN section 5):

    phase_j = 2 Phi_avg_j - df_j tau_rt + (df_j - df_{j-1}) tau_rt^2 / (2 T) + fibre_j

The firmware knows df exactly (it emits the tuning words; they are applied
`latency` ticks later) and subtracts its own model of 2 Phi_avg before
unwrapping (`aom_model_step` below). What is left, y_j, steps by
-df tau_rt when df steps: dphi/df = 2 pi tau_rt (DESIGN section 4).

Modulation. df follows a Thue-Morse sequence of +-a chips (+ - - + - + + -,
8 chips a period): its demodulation sum_j s_j y_j over a period cancels any
polynomial of degree <= 2 in the fibre drift (thermal ramps, acoustic
motion slower than the chips), so the fibre noise leaks only through its
curvature at the chip rate. Periods alternate between a small step
(`a_small`, every `small_every`-th period) and a large one (`a_large`).
Each period gives one sample of

    p = sum s_j y_j = -u N1 + u^2 R2 / (2 T f_clk),   u = f_clk tau_rt (codes per ftw)

with N1 = sum s_j ftw_j (= chips used x a) and R2 = sum s_j (ftw_j - ftw_{j-1})
(the front end's transient term, zero when the first `skip` ticks of every
chip are dropped). The mean over periods of each step size gives tau_rt;
the scatter of the periods gives its standard error.

Consistency (CAL_FAILED otherwise): at least two periods of each size;
0 < tau_rt <= max_tau_rt_s; k_sigma standard errors of the large-step
estimate inside the tolerance max(tol_rel tau_rt, tol_abs_s); the two step
sizes agree within k_agree combined standard errors plus that tolerance
(the small step's estimate is ~10 times noisier: the check is there for
gross errors, a lost turn, a non-linear AOM, not for its statistics).
The unwrapper follows the phase continuously (with the AOM's known motion
taken out before the wrap), so whole turns never alias as long as one
tick's residual step stays under half a turn; a turn lost on the large step
would shift its estimate by 1/(N1_large) turn per period and fail the
agreement with the small step, which moves the phase four times less.

Noise floor. The self-heterodyne laser term of a 1 kHz laser, white per tick
with RMS tau_rt sqrt(2 pi dnu / T) / (2 pi) turns, bounds the relative
error to 0.18 / sqrt(ticks) at a 0.45-turn-per-tick step (0.32 at a quarter
turn): 3000 ticks (30 ms) give 0.33 % RMS whatever the link length. So the
large step runs at 0.45 turn per tick: the phase motion is the AOM's own
(known) and is subtracted before unwrapping, so only the fibre's residual
must stay under half a turn per tick.

Long links (tau_rt > T/2): chips of `chip` ticks with the first `skip`
ticks of each chip dropped (skip >= tau_rt / T + 1), so only settled
samples are used and R2 = 0.

Fixed point: y, p in int64 phase codes (2**32 per turn); p >> DEV_SHIFT for
the scatter (|p| < 2**37 for a 1 ms round trip at 2.25 kHz steps, so the
deviation from the first period, clamped to +-2**26, squares under 2**52
and sums over up to 2**11 periods without overflow). The one-off solution
at the end of a calibration (`cal_finish`) is float64: it runs once per
insertion, on accumulated integers, and no signal path goes through it.
"""
import math

import numpy as np
from numba import njit

TM_CHIPS = 8                 # chips per Thue-Morse period
DEV_SHIFT = 4
DEV_CLAMP = 1 << 26
MAX_PERIODS = 1 << 11

# Rows of the per-channel accumulator block int64[CAL_ROWS, N].
(CAL_Y0, CAL_P, CAL_R2, CAL_D,
 CAL_N0, CAL_N1, CAL_S0, CAL_S1, CAL_REF0, CAL_REF1, CAL_DEV0, CAL_DEV1,
 CAL_DEV20, CAL_DEV21, CAL_R2S0, CAL_R2S1,
 CAL_DFIRST, CAL_DLAST, CAL_PFIRST, CAL_PLAST) = range(20)
CAL_ROWS = 20

# cal_finish status codes
CAL_OK, CAL_TOO_FEW, CAL_RANGE, CAL_NOISY, CAL_DISAGREE = range(5)
CAL_STATUS_NAMES = ("ok", "too few periods", "tau_rt out of range", "too noisy",
                    "step sizes disagree")


@njit(cache=True, inline="always")
def tm_sign(k):
    """Thue-Morse chip sign of chip k (mod 8): +1 when popcount(k & 7) is even."""
    k = k & 7
    return 1 - 2 * ((k ^ (k >> 1) ^ (k >> 2)) & 1)


@njit(cache=True, inline="always")
def cal_drive(v, chip, small_every, n_periods, a_small, a_large):
    """Tuning-word offset (ftw, signed) of pattern tick v; 0 outside the pattern.

    v: ticks since the pattern started (>= 0 in the pattern); chip: ticks per
    chip (>= 1); every small_every-th period (the first included) uses
    a_small, the others a_large; n_periods periods in all.
    """
    if v < 0:
        return 0
    per_len = TM_CHIPS * chip
    p = v // per_len
    if p >= n_periods:
        return 0
    amp = a_small if p % small_every == 0 else a_large
    return tm_sign(v // chip) * amp


@njit(cache=True, inline="always")
def cal_accumulate(acc, c, v, y, f_now, f_prev, chip, skip, small_every):
    """Fold sample v of channel c into its accumulator column.

    acc: int64[CAL_ROWS, N]; y: int64 phase codes with the AOM model taken
    out, relative to the first sample (acc[CAL_Y0]); f_now, f_prev: the
    tuning-word offsets applied during sample v and v-1 (the modulation
    only: a constant offset cancels). Returns True when v closed a period.
    """
    per_len = TM_CHIPS * chip
    p = v // per_len
    w = v - p * per_len
    k = w // chip
    s = np.int64(tm_sign(k))
    if w - k * chip >= skip:
        acc[CAL_P, c] += s * y
        acc[CAL_D, c] += y
        acc[CAL_R2, c] += s * (np.int64(f_now) - np.int64(f_prev))
    if w != per_len - 1:
        return False
    cls = 0 if p % small_every == 0 else 1
    q = acc[CAL_P, c] >> DEV_SHIFT
    if acc[CAL_N0 + cls, c] == 0:
        acc[CAL_REF0 + cls, c] = q
    dev = min(max(q - acc[CAL_REF0 + cls, c], -DEV_CLAMP), DEV_CLAMP)
    if acc[CAL_N0 + cls, c] < MAX_PERIODS:
        acc[CAL_N0 + cls, c] += 1
        acc[CAL_S0 + cls, c] += acc[CAL_P, c]
        acc[CAL_DEV0 + cls, c] += dev
        acc[CAL_DEV20 + cls, c] += dev * dev
        acc[CAL_R2S0 + cls, c] += acc[CAL_R2, c]
    if p == 0:
        acc[CAL_DFIRST, c] = acc[CAL_D, c]
        acc[CAL_PFIRST, c] = p
    acc[CAL_DLAST, c] = acc[CAL_D, c]
    acc[CAL_PLAST, c] = p
    acc[CAL_P, c] = 0
    acc[CAL_D, c] = 0
    acc[CAL_R2, c] = 0
    return True


@njit(cache=True)
def _solve(mean_p, n1, mean_r2, tick_s, f_clk):
    """u = f_clk tau_rt from mean_p = -u n1 + u^2 mean_r2 / (2 T f_clk): the root
    that goes to -mean_p / n1 as the transient term vanishes (stable form)."""
    a = mean_r2 / (2.0 * tick_s * f_clk)
    disc = n1 * n1 + 4.0 * a * mean_p
    if disc <= 0.0:
        return -mean_p / n1
    return -2.0 * mean_p / (n1 + math.sqrt(disc))


@njit(cache=True)
def cal_finish(acc, c, used_per_chip, a_small, a_large, tick_s, f_clk, tol_rel, tol_abs_s,
               max_tau_rt_s, k_sigma, chip, k_agree):
    """(tau_rt_s, sigma_s, beat_codes_per_tick, status) from channel c's accumulators.

    used_per_chip: samples per chip that entered the sums (chip - skip).
    beat: the drift of y (codes per tick) between the first and last period:
    the free-running beat with the AOM taken out (frequency acquisition).
    """
    est = np.zeros(2)
    se = np.zeros(2)
    for cls in range(2):
        n = acc[CAL_N0 + cls, c]
        if n < 2:
            return 0.0, 0.0, 0.0, CAL_TOO_FEW
        a = a_small if cls == 0 else a_large
        n1 = float(TM_CHIPS * used_per_chip) * a
        mean_p = acc[CAL_S0 + cls, c] / n
        mean_r2 = acc[CAL_R2S0 + cls, c] / n
        u = _solve(mean_p, n1, mean_r2, tick_s, f_clk)
        md = acc[CAL_DEV0 + cls, c] / n
        var_q = max(acc[CAL_DEV20 + cls, c] / n - md * md, 0.0)
        var_p = var_q * float(1 << (2 * DEV_SHIFT))
        # d p / d u = -n1 + u R2 / (T f_clk): the slope of the estimator
        slope = abs(-n1 + u * mean_r2 / (tick_s * f_clk))
        est[cls] = u / f_clk
        se[cls] = math.sqrt(var_p / n) / slope / f_clk
    tau = est[1]
    tol = max(tol_rel * abs(tau), tol_abs_s)
    n_per = acc[CAL_PLAST, c] - acc[CAL_PFIRST, c]
    beat = 0.0
    if n_per > 0:
        beat = (acc[CAL_DLAST, c] - acc[CAL_DFIRST, c]) / float(TM_CHIPS * used_per_chip) / \
            float(n_per * TM_CHIPS * chip)
    if not (tau > 0.0 and tau <= max_tau_rt_s):
        return tau, se[1], beat, CAL_RANGE
    if k_sigma * se[1] > tol:
        return tau, se[1], beat, CAL_NOISY
    if abs(est[0] - est[1]) > k_agree * math.sqrt(se[0] ** 2 + se[1] ** 2) + tol:
        return tau, se[1], beat, CAL_DISAGREE
    return tau, se[1], beat, CAL_OK


@njit(cache=True, inline="always")
def aom_codes(f2, kq16):
    """round(f2 kq16 / 2**16) without the 2**16-scaled product.

    f2: a sum of two tuning words (|f2| <= 2**32); kq16 = f_clk T 2**16 with
    f_clk T < 2**30 (loop rates down to 1 Hz at a 1 GHz DDS clock). kq16 is
    split into whole codes and a Q16 fraction: f2 (kq16 >> 16) is at most
    32 + 30 = 62 bits and f2 (kq16 & 0xFFFF) 32 + 16 = 48 bits, so neither
    overflows; the sum equals the rounded full product exactly, because the
    whole part is a multiple of 2**16 before the shift.
    """
    whole = kq16 >> 16
    frac = kq16 & 0xFFFF
    return f2 * whole + ((f2 * frac + (1 << 15)) >> 16)


@njit(cache=True, inline="always")
def aom_model_step(f_now, f_prev, kq16, averaged):
    """Round-trip phase codes the AOM adds over one tick: 2 (Phi_j - Phi_{j-1}).

    f_now, f_prev: tuning words (int32) applied during this sample and the
    previous one; kq16 = f_clk T 2**16 (codes per tuning-word LSB per tick,
    Q16). Tick-averaged front end (`averaged`): the sample is the average
    of the phasor over the tick, 2 Phi_avg_j - 2 Phi_avg_{j-1} =
    (f_now + f_prev) f_clk T codes; point-sampled: 2 f_prev f_clk T.
    Budget: see `aom_codes` (f_clk T < 2**30, checked by the builder).
    """
    if averaged:
        return aom_codes(np.int64(f_now) + np.int64(f_prev), kq16)
    return aom_codes(np.int64(f_prev) << 1, kq16)
