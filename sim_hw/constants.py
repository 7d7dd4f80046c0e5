"""Physical constants of the attobus rig (sim_hw never imports firmware).

The values below repeat the few of `firmware/units.py` the rig needs, so the
simulated hardware and the bank agree on the meaning of a round-trip turn
without an import across the sim_hw/firmware boundary. tests/test_rig.py
checks that both copies agree.
"""
import math

SPEED_OF_LIGHT_M_S = 299_792_458.0
WAVELENGTH_M = 1550e-9                        # carrier of the optical reference
OPTICAL_FREQ_HZ = SPEED_OF_LIGHT_M_S / WAVELENGTH_M   # 193.4 THz
OPTICAL_PERIOD_S = 1.0 / OPTICAL_FREQ_HZ      # 5.1704 fs
# The round trip passes the fibre twice: one turn of the round-trip beat is
# half an optical period of one-way delay (same as firmware/units.py).
ONEWAY_S_PER_TURN = OPTICAL_PERIOD_S / 2.0    # 2.5852 fs

PLANCK_J_S = 6.62607015e-34
PHOTON_ENERGY_J = PLANCK_J_S * OPTICAL_FREQ_HZ   # 1.28e-19 J at 1550 nm

TWO_PI = 2.0 * math.pi

# Link geometries (integer codes stored per channel).
GEOM_RACK = 0          # short rack link: lumped model, tau << tick
GEOM_DISTRIBUTED = 1   # out-and-back on one fibre, Faraday mirror at the far end
GEOM_FOLDED = 2        # single fibre looped back to the lab (seed 004 appendix)
GEOMETRY_CODES = {"rack": GEOM_RACK, "distributed": GEOM_DISTRIBUTED,
                  "folded": GEOM_FOLDED}
