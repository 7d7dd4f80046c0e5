"""Channel states and fault flags (DESIGN section 4), integer-coded.

States form a ladder evaluated inside the jitted tick, one per channel
(firmware/channel_fsm.py; docs/state_machine.md draws it).

Fault flags are bits of a uint32 per channel. `faults_live` is this tick's
picture: condition bits follow their condition, event bits are set on the
tick of the event only. `faults_sticky` ORs every tick's live bits until
the reader clears it (`Bank.read_faults`: clear on read). Counters
(slip_count, relock_count, holdover_count, cycle_lost_count,
nonrecip_count, fault_count) run free.

Flag             kind       raised when                                   latency (defaults, 100 kHz)
LOSS_OF_LOCK     event      |error| > loss window or PZT at its           loss_time (0.1 ms) after the
                            threshold for loss_time; a locked blade       error leaves the window; 1 tick
                            removed; HOLDOVER ran out                     for a removal the board reports
WEAK_RETURN      condition  return power < weak threshold (blade in)      1 tick
PZT_SAT          condition  |PZT code - mid| >= pzt_sat_frac range        1 tick after the code gets there
SPOOL_SAT        condition  spool code at its threshold, or (LOCKED)      <= one offload period
                            the mean PZT command past pzt_alarm_frac      (2**decimation ticks, 2.56 ms)
CYCLE_SLIP       event      the absolute cycle is lost or suspect: a      relock_confirm (30 us) after the
                            relock with a new setpoint, a return whose    return; with LOSS_OF_LOCK
                            phase is not continuous
CAL_FAILED       condition  calibration inconsistent (live in FAULT)      end of calibration (40 ms), or
                                                                          1 tick for a bad sample
NONRECIPROCITY   event      a LOCKED round-trip step faster than a        1 tick (step < slew limit), else
                            reciprocal fibre moves (step_detect)          relock_confirm + 1 tick
COMM_TIMEOUT     condition  no frame from the board this tick             1 tick of the host's watchdog
ADC_OVERRANGE    condition  |I| or |Q| at the ADC rail this tick          1 tick
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
FLAG_BITS = {name: bit for bit, name in FLAG_NAMES.items()}


def flag_names(bits: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES.items() if bits & bit]
