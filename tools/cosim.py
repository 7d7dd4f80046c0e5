"""Fused co-simulation: rig and bank in one jitted loop.

Bit-identical to stepping the bank through `hal.sim_backend.SimBackend`
(the same calls in the same order: rig tick with last tick's codes, then
bank tick), without the per-tick Python round trip.
"""
import numpy as np
from numba import njit

from firmware.bank import tick
from sim_hw.rig import rig_step


@njit(cache=True)
def cosim_chunk(rig_cfg, rig_st, bank_cfg, bank_st, pzt, spool, aom, adc_i, adc_q, truth,
                truth_rec, pzt_rec, spool_rec, state_rec, err_rec, servo_on):
    """Run truth_rec.shape[0] ticks; records [T, N] of truth, codes, state, error.

    pzt, spool, aom (int32[N]) carry the codes between chunks; servo_on = False
    keeps the actuators at their codes (open loop) while still ticking the bank.
    """
    for t in range(truth_rec.shape[0]):
        rig_step(rig_cfg, rig_st, pzt, spool, aom, adc_i, adc_q, truth)
        if servo_on:
            tick(bank_cfg, bank_st, adc_i, adc_q, pzt, spool, aom)
        for c in range(truth.shape[0]):
            truth_rec[t, c] = truth[c]
            pzt_rec[t, c] = pzt[c]
            spool_rec[t, c] = spool[c]
            state_rec[t, c] = bank_st.chan_state[c]
            err_rec[t, c] = bank_st.setpoint[c] - bank_st.phase_acc[c]
