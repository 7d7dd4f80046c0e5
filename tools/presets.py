"""Bank settings per scenario: the servo designs of docs/loop_design.md
(rack, PZT) and docs/validation.md (long links, AOM)."""
from __future__ import annotations

from firmware.bank import BankSettings, OffloadSettings, default_servo


def bank_settings_for(scenario, n_channels) -> BankSettings:
    rate = scenario.loop_rate_hz
    if any(g != "rack" for g in scenario.geometries):
        return _long_link_settings(scenario, n_channels)
    return BankSettings(
        n_channels=n_channels, loop_rate_hz=rate, actuator="pzt",
        servo=default_servo(rate, scenario.pzt_range_s),
        offload=OffloadSettings(spool_tau_s=scenario.spool_tau_s, pzt_range_s=scenario.pzt_range_s,
                                spool_range_s=scenario.spool_range_s),
        pzt_resonance_hz=scenario.pzt_resonance_hz,
    )


def long_link_lengths_m(scenario, n_channels) -> tuple:
    """Link length each channel's servo is designed for (m): the scenario's
    fixed length of the channel, or its longest link when lengths are drawn
    per blade (a servo designed for the longest link keeps its margins on
    every shorter one: its gain and corners only fall with tau)."""
    if scenario.link_lengths_m:
        L = scenario.link_lengths_m
        return tuple(float(L[c % len(L)]) for c in range(n_channels))
    return (float(scenario.link_length_max_m),) * n_channels


# A long link's in-loop error is the fibre noise its delay leaves unsuppressed
# (~1.7 fs RMS on longhaul's 100 km links, docs/validation.md), beyond the
# rack's +-half a turn: +-330 fs keeps it off the rail at 1.5e-4 as resolution.
LONG_LINK_ERROR_RANGE_S = 300e-15


def _long_link_settings(scenario, n_channels) -> BankSettings:
    """Long links: the AOM (DDS frequency) is the actuator, one servo per
    channel from its link delay (tools.loop_design.longhaul_servo). The
    noise shaper setting only concerns the PZT path (unused here); "first"
    is valid at any loop rate, the 30 kHz notch is not at 10 kHz."""
    from tools.loop_design import AomPlant, aom_in_loop_rms_s, longhaul_servo
    rate = scenario.loop_rate_hz
    lengths = long_link_lengths_m(scenario, n_channels)
    servos = tuple(longhaul_servo(L * scenario.group_delay_s_per_m, rate,
                                  scenario.dac_latency_ticks) for L in lengths)
    # Lock windows above the in-loop error the delay leaves (the loop model's,
    # of the longest link; one window per bank): lock within 4 sigma, loss
    # beyond 3x that. A rack's 0.5/1 fs would never see a 100 km link lock.
    c = max(range(n_channels), key=lambda i: lengths[i])
    tau = scenario.oneway_delay_s(lengths[c])
    sigma = aom_in_loop_rms_s(servos[c], AomPlant(rate, tau, scenario.dac_latency_ticks,
                                                  scenario.internal_steps_per_tick),
                              lambda f: scenario.fibre_psd_s2_per_hz(f, lengths[c]))
    lock_s = max(1.2e-15, 4.0 * sigma)
    return BankSettings(
        n_channels=n_channels, loop_rate_hz=rate, actuator="aom", servo=servos,
        noise_shaper="first", error_range_s=LONG_LINK_ERROR_RANGE_S,
        lock_window_s=lock_s, loss_window_s=max(5e-15, 3.0 * lock_s),
        offload=OffloadSettings(spool_tau_s=scenario.spool_tau_s, pzt_range_s=scenario.pzt_range_s,
                                spool_range_s=scenario.spool_range_s),
        pzt_resonance_hz=scenario.pzt_resonance_hz,
    )
