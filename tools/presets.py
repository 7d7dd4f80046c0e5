"""Bank settings per scenario: the servo designs of docs/loop_design.md."""
from __future__ import annotations

from firmware.bank import BankSettings, OffloadSettings, default_servo


def bank_settings_for(scenario, n_channels) -> BankSettings:
    rate = scenario.loop_rate_hz
    return BankSettings(
        n_channels=n_channels, loop_rate_hz=rate, actuator="pzt",
        servo=default_servo(rate, scenario.pzt_range_s),
        offload=OffloadSettings(spool_tau_s=scenario.spool_tau_s, pzt_range_s=scenario.pzt_range_s,
                                spool_range_s=scenario.spool_range_s),
        pzt_resonance_hz=scenario.pzt_resonance_hz,
    )
