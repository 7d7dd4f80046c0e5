"""Pass timing of a segmented long link (numpy, build time).

A link of one-way delay tau is cut into K segments, each carrying its own
delay noise d_j(t) (independent between segments). Light reaching the end of
a pass at time t crossed segment j at t - (delay of the rest of its path);
the tables below give those delays for the round trip (measured at the MCU)
and for the forward signal (the ground truth at the blade), with the segment
midpoints z_j as crossing points.

distributed (out and back on one fibre of delay tau, Faraday mirror at the
far end; Williams et al. JOSA B 25, 1284 (2008)): z_j = (j + 1/2) tau / K,
    round trip: d_j(t - 2 tau + z_j) + d_j(t - z_j)
    forward   : d_j(t - tau + z_j)
folded (seed 004 appendix eq. 3: a fibre of delay tau/2 looped back to the
lab, the forward signal goes out and back once, the round trip twice):
z_j = (j + 1/2) (tau/2) / K,
    round trip: d_j(t - 2 tau + z_j) + d_j(t - tau - z_j)
              + d_j(t - tau + z_j) + d_j(t - z_j)
    forward   : d_j(t - tau + z_j) + d_j(t - z_j)
A near-end actuator c(t) enters the round trip as c(t) + c(t - 2 tau) and the
forward signal as c(t - tau) in both geometries.

With the round trip held at zero, to first order in tau d/dt the forward
residual is sum_j z_j d_j' (distributed) or sum_j tau d_j' (folded), hence
a = (1/K) sum ((j+1/2)/K)^2 = 1/3 - 1/(12 K^2) and a = 1/4 exactly, with
S_fiber the coherent forward PSD: each segment carries S_fiber / (K P^2),
P = forward passes per segment (1 distributed, 2 folded).
"""
import numpy as np

from .constants import GEOM_DISTRIBUTED, GEOM_FOLDED

MAX_RT_PASSES = 4
MAX_FW_PASSES = 2


def forward_passes(geometry: int) -> int:
    """Forward passes through each physical segment."""
    return 2 if geometry == GEOM_FOLDED else 1


def pass_delays(geometry: int, tau_s: float, n_segments: int):
    """(rt_delay_s, rt_weight, fw_delay_s, fw_weight) per segment and pass.

    rt_*: (K, 4), fw_*: (K, 2); unused passes have weight 0 and delay 0.
    """
    K = int(n_segments)
    rt_d = np.zeros((K, MAX_RT_PASSES))
    rt_w = np.zeros((K, MAX_RT_PASSES))
    fw_d = np.zeros((K, MAX_FW_PASSES))
    fw_w = np.zeros((K, MAX_FW_PASSES))
    j = np.arange(K) + 0.5
    if geometry == GEOM_DISTRIBUTED:
        z = j * tau_s / K
        rt_d[:, 0], rt_d[:, 1] = 2 * tau_s - z, z
        rt_w[:, :2] = 1.0
        fw_d[:, 0] = tau_s - z
        fw_w[:, 0] = 1.0
    elif geometry == GEOM_FOLDED:
        z = j * 0.5 * tau_s / K
        rt_d[:] = np.stack([2 * tau_s - z, tau_s + z, tau_s - z, z], axis=1)
        rt_w[:] = 1.0
        fw_d[:] = np.stack([tau_s - z, z], axis=1)
        fw_w[:] = 1.0
    else:
        raise ValueError("pass_delays: segmented geometries only")
    return rt_d, rt_w, fw_d, fw_w


def to_steps(delay_s, dt_s):
    """Delay (s) -> (whole internal steps D, fraction f): x(t - d) is read as
    (1 - f) x[n - D] + f x[n - D - 1] (linear fractional delay)."""
    q = np.asarray(delay_s, float) / dt_s
    D = np.floor(q)
    f = q - D
    return D.astype(np.int64), f


def folded_open_loop_factor(f_hz, tau_s, n_segments):
    """Free-running forward PSD of a folded link / S_fiber: the two passes of
    a segment decorrelate when f tau is not small,
    (1/K) sum_j |1 + exp(-i 2 pi f (tau - 2 z_j))|^2 / 4 (1 at f -> 0)."""
    f = np.asarray(f_hz, float)[..., None]
    z = (np.arange(n_segments) + 0.5) * 0.5 * tau_s / n_segments
    h = 1.0 + np.exp(-2j * np.pi * f * (tau_s - 2 * z))
    return np.mean(np.abs(h) ** 2, axis=-1) / 4.0
