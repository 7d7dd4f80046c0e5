"""Machine units of the bank and their physical meaning.

Everything inside `firmware/` is integer. These constants are the only place
where machine units meet physical ones; builders (settings -> config) and
reports use them, the tick never does.

Phase: int32 "turns", 2**32 codes = one turn of the round-trip beat. The
round trip passes the fibre twice, so one round-trip turn is half an optical
period of one-way delay: 1550 nm -> 5.1704 fs period -> 2.5852 fs one-way.
"""

SPEED_OF_LIGHT_M_S = 299_792_458.0
WAVELENGTH_M = 1550e-9
OPTICAL_FREQ_HZ = SPEED_OF_LIGHT_M_S / WAVELENGTH_M
OPTICAL_PERIOD_S = 1.0 / OPTICAL_FREQ_HZ

PHASE_BITS = 32
TURN = 1 << PHASE_BITS                      # codes per round-trip turn
HALF_TURN = 1 << (PHASE_BITS - 1)
QUARTER_TURN = 1 << (PHASE_BITS - 2)

# One round-trip turn expressed as one-way delay at the blade.
ONEWAY_S_PER_TURN = OPTICAL_PERIOD_S / 2.0   # 2.5852e-15 s
ONEWAY_S_PER_PHASE_CODE = ONEWAY_S_PER_TURN / TURN  # 6.02e-25 s = 6.0e-7 as

PZT_DAC_BITS = 20
SPOOL_DAC_BITS = 16
DDS_FTW_BITS = 32


def seconds_to_phase_codes(delay_s: float) -> float:
    """One-way delay (s) -> round-trip phase codes (float, not rounded)."""
    return delay_s / ONEWAY_S_PER_PHASE_CODE


def phase_codes_to_seconds(codes) -> float:
    """Round-trip phase codes -> one-way delay (s)."""
    return codes * ONEWAY_S_PER_PHASE_CODE
