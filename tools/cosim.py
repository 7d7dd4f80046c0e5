"""Fused co-simulation: rig and bank in one jitted loop.

Bit-identical to stepping the bank through `hal.sim_backend.SimBackend`
(the same calls in the same order: rig tick with last tick's codes, then
bank tick), without the per-tick Python round trip.

The board reports each channel's blade serial, 0 when no blade is in: the
rig keeps the serial of a removed blade in `blade_serial` and marks it
absent in `present`, so the report is `blade_serial` where `present`.
"""
import numpy as np
from numba import njit

from firmware.bank import tick
from sim_hw.rig import rig_step

# cosim_chunk links the bank's tick: see firmware.bank.LADDER_SOURCES_SHA1
LADDER_SOURCES_SHA1 = "4b1acb785dd0b6bb"


@njit(cache=True)
def board_serials(rig_st, out):
    """The serials a board reports: the blade's where one is in, else 0."""
    for c in range(out.shape[0]):
        out[c] = rig_st.blade_serial[c] if rig_st.present[c] != 0 else np.uint64(0)


@njit(cache=True)
def cosim_chunk(rig_cfg, rig_st, bank_cfg, bank_st, pzt, spool, aom, adc_i, adc_q, truth,
                truth_rec, pzt_rec, spool_rec, state_rec, err_rec, faults_rec, serial, servo_on):
    """Run truth_rec.shape[0] ticks; records [T, N] of truth, codes, state,
    in-loop error and live fault bits.

    pzt, spool, aom (int32[N]) carry the codes between chunks; serial
    (uint64[N]) is scratch for the board's blade report; servo_on = False
    keeps the actuators at their codes (open loop) while still ticking the
    bank.
    """
    # Fields read per channel are unpacked once: a namedtuple field access
    # inside the channel loop costs reference counting every time.
    chan_state, setpoint, phase_acc, live = (bank_st.chan_state, bank_st.setpoint,
                                             bank_st.phase_acc, bank_st.faults_live)
    for t in range(truth_rec.shape[0]):
        rig_step(rig_cfg, rig_st, pzt, spool, aom, adc_i, adc_q, truth)
        board_serials(rig_st, serial)
        if servo_on:
            tick(bank_cfg, bank_st, adc_i, adc_q, pzt, spool, aom, serial)
        for c in range(truth.shape[0]):
            truth_rec[t, c] = truth[c]
            pzt_rec[t, c] = pzt[c]
            spool_rec[t, c] = spool[c]
            state_rec[t, c] = chan_state[c]
            err_rec[t, c] = setpoint[c] - phase_acc[c]
            faults_rec[t, c] = live[c]
