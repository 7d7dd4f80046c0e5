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


def _long_link_settings(scenario, n_channels) -> BankSettings:
    """Long links: the AOM (DDS frequency) is the actuator, one servo per
    channel from its link delay (tools.loop_design.longhaul_servo). The
    noise shaper setting only concerns the PZT path (unused here); "first"
    is valid at any loop rate, the 30 kHz notch is not at 10 kHz."""
    from tools.loop_design import longhaul_servo
    rate = scenario.loop_rate_hz
    servos = tuple(longhaul_servo(L * scenario.group_delay_s_per_m, rate,
                                  scenario.dac_latency_ticks)
                   for L in long_link_lengths_m(scenario, n_channels))
    return BankSettings(
        n_channels=n_channels, loop_rate_hz=rate, actuator="aom", servo=servos,
        noise_shaper="first",
        offload=OffloadSettings(spool_tau_s=scenario.spool_tau_s, pzt_range_s=scenario.pzt_range_s,
                                spool_range_s=scenario.spool_range_s),
        pzt_resonance_hz=scenario.pzt_resonance_hz,
    )
