"""Channel states and fault flags (DESIGN section 4), integer-coded.

States form a ladder evaluated inside the jitted tick, one per channel.
Fault flags are bits of a uint32: `live` bits follow the condition, `sticky`
bits latch it until read (the reader clears them).
"""
EMPTY, DETECTED, CALIBRATING, ACQUIRING, LOCKED, HOLDOVER, FAULT = range(7)
STATE_NAMES = ("EMPTY", "DETECTED", "CALIBRATING", "ACQUIRING", "LOCKED", "HOLDOVER", "FAULT")

LOSS_OF_LOCK = 1 << 0
WEAK_RETURN = 1 << 1
PZT_SAT = 1 << 2
SPOOL_SAT = 1 << 3
CYCLE_SLIP = 1 << 4
CAL_FAILED = 1 << 5
NONRECIPROCITY = 1 << 6
COMM_TIMEOUT = 1 << 7
ADC_OVERRANGE = 1 << 8

FLAG_NAMES = {
    LOSS_OF_LOCK: "LOSS_OF_LOCK", WEAK_RETURN: "WEAK_RETURN", PZT_SAT: "PZT_SAT",
    SPOOL_SAT: "SPOOL_SAT", CYCLE_SLIP: "CYCLE_SLIP", CAL_FAILED: "CAL_FAILED",
    NONRECIPROCITY: "NONRECIPROCITY", COMM_TIMEOUT: "COMM_TIMEOUT",
    ADC_OVERRANGE: "ADC_OVERRANGE",
}


def flag_names(bits: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES.items() if bits & bit]
