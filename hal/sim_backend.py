"""`sim://SCENARIO?channels=N&seed=K`: the simulated rig as a lock-step backend.

Each `exchange` runs one rig tick with the codes of the previous tick (the
rig's own latch supplies the one-tick latency) and returns that tick's I/Q
plus the ground-truth one-way delay and the blade serials the board reports
(0 for an empty slot). The rig lives in `sim_hw`; this module only adapts
it to the Backend interface.
"""
from __future__ import annotations

import numpy as np

from hal.backend import Backend, Capabilities
from hal.frames import InFrame, OutFrame
from sim_hw.rig import build_rig, rig_step
from sim_hw.scenarios import get_scenario


def board_serials(rig_state, out):
    """The serials a board reports: the blade's where one is in, else 0."""
    np.copyto(out, np.where(rig_state.present != 0, rig_state.blade_serial, np.uint64(0)))


class SimBackend(Backend):
    def __init__(self, scenario="rack10", n_channels=None, seed=0):
        self.scenario = get_scenario(scenario) if isinstance(scenario, str) else scenario
        n = self.scenario.n_channels if n_channels is None else int(n_channels)
        self.rig_cfg, self.rig_state = build_rig(self.scenario, n, int(seed))
        self.capabilities = Capabilities(
            n_channels=n, loop_rate_hz=self.scenario.loop_rate_hz,
            pzt_dac_bits=self.scenario.pzt_dac_bits, spool_dac_bits=self.scenario.spool_dac_bits,
            dds_ftw_bits=self.scenario.dds_ftw_bits, has_truth=True)
        self._in = InFrame.empty(n, with_truth=True, with_serial=True)
        self._open = False

    @classmethod
    def from_params(cls, scenario, params):
        unknown = set(params) - {"channels", "seed"}
        if unknown:
            raise ValueError(f"sim:// does not take {sorted(unknown)}; it takes channels and seed")
        try:
            n = int(params["channels"]) if "channels" in params else None
            seed = int(params.get("seed", 0))
        except ValueError as e:
            raise ValueError(f"sim:// channels and seed must be integers: {e}") from None
        return cls(scenario, n, seed)

    def open(self):
        self._open = True

    def close(self):
        self._open = False

    def exchange(self, out: OutFrame) -> InFrame:
        f = self._in
        rig_step(self.rig_cfg, self.rig_state, out.pzt_code, out.spool_code, out.aom_ftw,
                 f.adc_i, f.adc_q, f.true_delay_s)
        f.tick = int(self.rig_state.tick[0])
        np.copyto(f.board_flags, self.rig_state.adc_overrange.astype(np.uint32), casting="unsafe")
        board_serials(self.rig_state, f.blade_serial)
        return f
