"""The frames exchanged between a backend and the bank, one per tick.

Both are struct-of-arrays: one numpy array per field, length N channels.
The bank's tick takes these arrays directly (`firmware` never imports
`hal`); the layouts here are what every backend produces and consumes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class InFrame:
    """Board -> host, one tick.

    tick: board tick counter. adc_i, adc_q: int16[N] demodulated beat.
    board_flags: uint32[N] per-channel board status (bit 0: ADC overrange).
    true_delay_s: float64[N] ground-truth one-way delay deviation at each blade,
        only from simulated backends (None on hardware): for out-of-loop residuals.
    blade_serial: uint64[N] serial of the blade in each slot, 0 = no blade;
        None when the board does not report blades (the bank then detects
        blades by their return power alone and skips "auto" calibration).
    """
    tick: int
    adc_i: np.ndarray
    adc_q: np.ndarray
    board_flags: np.ndarray
    true_delay_s: np.ndarray | None = None
    blade_serial: np.ndarray | None = None

    @classmethod
    def empty(cls, n: int, with_truth: bool = False, with_serial: bool = False) -> "InFrame":
        return cls(0, np.zeros(n, np.int16), np.zeros(n, np.int16), np.zeros(n, np.uint32),
                   np.zeros(n) if with_truth else None,
                   np.zeros(n, np.uint64) if with_serial else None)


@dataclass
class OutFrame:
    """Host -> board, one tick.

    pzt_code: int32[N], 0 .. 2**20-1 (mid-scale 2**19 = no displacement).
    spool_code: int32[N], 0 .. 65535 (mid 32768). aom_ftw: int32[N] signed DDS
    tuning-word offset. hold: uint8[N], 1 asks the board to hold that
    channel's actuators (used when the host has lost the board's input).
    """
    pzt_code: np.ndarray
    spool_code: np.ndarray
    aom_ftw: np.ndarray
    hold: np.ndarray

    @classmethod
    def mid_scale(cls, n: int) -> "OutFrame":
        return cls(np.full(n, 1 << 19, np.int32), np.full(n, 1 << 15, np.int32),
                   np.zeros(n, np.int32), np.zeros(n, np.uint8))

    def validate(self, pzt_bits=20, spool_bits=16) -> None:
        """Refuse codes outside the DAC ranges before anything is sent."""
        for name, arr, hi in (("pzt_code", self.pzt_code, (1 << pzt_bits) - 1),
                              ("spool_code", self.spool_code, (1 << spool_bits) - 1)):
            if arr.size and (arr.min() < 0 or arr.max() > hi):
                bad = int(np.flatnonzero((arr < 0) | (arr > hi))[0])
                raise ValueError(f"{name}[{bad}] = {int(arr[bad])} outside 0..{hi}")
