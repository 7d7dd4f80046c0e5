"""Reference scenarios of the attobus rig (DESIGN section 5), as data.

A `Scenario` holds every parameter of DESIGN section 5's table and of its
common parameters, with the unit in each field name. The four names are a
contract (`rack10`, `rack50`, `hotswap`, `longhaul`); their parameters may only
be made harder than the table, never easier. Each scenario also gives the
free-running disturbance analytically (`fibre_psd_s2_per_hz`), so every
validation compares the rig against a formula, never against itself.

Acoustic disturbance (all scenarios): the one-way delay of a link of length L
has the one-sided PSD

    S_ac(f) = S0(L) / ((1 + (f/f_lo)^2) (1 + (f/f_hi)^2))      [s^2/Hz]

(white noise through first-order low-passes at f_lo and f_hi: flat below f_lo,
f^-2 between, f^-4 above f_hi). S0(L) is set so that the RMS over the band
[acoustic_band_lo_hz, acoustic_band_hi_hz] (brick-wall integral of S_ac) is
acoustic_rms_s * sqrt(L / acoustic_ref_length_m). For rack10 that is 1 fs for
10 m over 10 Hz-2 kHz, the figure DESIGN's loop budget uses.

Thermal: delay = TCD * L * temperature, temperature = common ramp + a
per-channel random walk (diffusion temp_rw_k_per_sqrt_s^2). The rig draws the
walk every thermal_update_s and interpolates linearly between draws (the rate
is piecewise constant), so its one-way delay PSD is

    S_th(f) = (TCD L sigma_rw)^2 / (2 pi^2 f^2) * sinc^2(f U),  U = thermal_update_s

(the ramp is deterministic and excluded: detrend it). fibre_psd = S_ac + S_th.

Long links (longhaul): the closed-loop floor is the delay-unsuppressed noise
S_res(f) = a (2 pi f tau)^2 S_fiber(f), a = 1/3 for a distributed out-and-back
fibre (Williams, Swann, Newbury, JOSA B 25, 1284 (2008)) and a = 1/4 for the
folded single fibre (seed 004 appendix), tau the one-way delay of the link.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .constants import GEOMETRY_CODES, ONEWAY_S_PER_TURN, PHOTON_ENERGY_J

__all__ = ["Scenario", "SCENARIOS", "get_scenario", "draw_blade",
           "hotswap_schedule", "WILLIAMS_A"]

WILLIAMS_A = {"distributed": 1.0 / 3.0, "folded": 1.0 / 4.0}


@dataclass(frozen=True)
class Scenario:
    """Every parameter of one reference scenario (units in the names)."""

    name: str
    """Scenario name (a contract: rack10, rack50, hotswap, longhaul)."""
    description: str
    """One line for reports."""

    # --- channels and loop -------------------------------------------------
    n_channels: int = 40
    """Channels the scenario runs by default (DESIGN table column "ch")."""
    max_channels: int = 40
    """Largest channel count the scenario is defined for."""
    loop_rate_hz: float = 100e3
    """Bank tick rate = rig tick rate (Hz)."""
    dac_latency_ticks: int = 1
    """Ticks from computing a code to applying it: "the output computed from
    tick k is applied at tick k+1" (the rig implements 1 and rejects others)."""

    # --- links ---------------------------------------------------------------
    geometries: tuple = ("rack",)
    """Link geometry per channel, cycled: "rack" (lumped: delay << tick),
    "distributed" (out and back on one fibre, Faraday mirror at the far end)
    or "folded" (single fibre looped back to the lab, seed 004)."""
    link_length_min_m: float = 1.0
    """Shortest link (m) drawn for a blade."""
    link_length_max_m: float = 10.0
    """Longest link (m) drawn for a blade."""
    link_lengths_m: tuple = ()
    """Fixed link lengths (m) cycled over channels; empty: uniform random in
    [link_length_min_m, link_length_max_m] per blade."""
    group_delay_s_per_m: float = 4.90e-9
    """Fibre group delay (s/m): 4.90 ns/m."""

    # --- thermal -------------------------------------------------------------
    tcd_s_per_k_m: float = 40e-15
    """Thermal coefficient of delay (s per kelvin per metre): 40 fs/(K m)."""
    temp_ramp_k_per_s: float = 1.0 / 3600.0
    """Common temperature ramp of all links (K/s)."""
    temp_rw_k_per_sqrt_s: float = 1e-3
    """Per-channel temperature random walk (K/sqrt(s))."""
    thermal_update_s: float = 1e-3
    """Interval of the thermal random-walk draws (s), linear in between
    (rounded to whole ticks)."""

    # --- acoustic / vibration ------------------------------------------------
    acoustic_rms_s: float = 1e-15
    """One-way delay RMS over the acoustic band at acoustic_ref_length_m (s)."""
    acoustic_ref_length_m: float = 10.0
    """Length (m) at which acoustic_rms_s holds; RMS scales sqrt(L/ref)."""
    acoustic_corner_lo_hz: float = 10.0
    """Lower corner (Hz): PSD flat below, f^-2 above."""
    acoustic_corner_hi_hz: float = 2000.0
    """Upper corner (Hz) of the band: a Butterworth edge of acoustic_edge_order."""
    acoustic_edge_order: int = 1
    """Order n of the Butterworth edge at the upper corner: the PSD falls as
    f^-(2 + 2n) above it. The rack scenarios use 4: DESIGN's disturbance is
    band-limited ("f^-2 from 10 Hz to 2 kHz"), and a first-order edge would
    add out-of-band disturbance the table does not specify (it alone would
    leave ~40 as that no loop at 100 kHz can remove)."""
    acoustic_band_lo_hz: float = 10.0
    """Lower edge (Hz) of the band over which acoustic_rms_s is defined."""
    acoustic_band_hi_hz: float = 2000.0
    """Upper edge (Hz) of the band over which acoustic_rms_s is defined."""

    # --- laser ---------------------------------------------------------------
    wavelength_m: float = 1550e-9
    """Optical carrier wavelength (m)."""
    laser_linewidth_hz: float = 1e3
    """Lorentzian FWHM linewidth of the reference laser (Hz)."""

    # --- return path and front end -------------------------------------------
    return_power_dbm: float = -20.0
    """Return power on the photodiode at 0 dB connector loss (dBm)."""
    adc_bits: int = 16
    """I/Q ADC resolution (bits), signed."""
    adc_amplitude_lsb: float = 16384.0
    """Beat amplitude (LSB) at return_power_dbm: half of full scale."""
    quantum_efficiency: float = 0.8
    """Photodiode quantum efficiency (shot noise)."""
    frontend_noise_lsb_rms: float = 1.0
    """Electronic noise per I/Q sample after the tick average (LSB RMS)."""
    connector_loss_min_db: float = 0.0
    """Smallest connector loss (dB of return power) drawn for a blade."""
    connector_loss_max_db: float = 1.0
    """Largest connector loss (dB of return power) drawn for a blade."""
    faraday_mirror: bool = True
    """Faraday mirror at the blade (no polarisation fading)."""
    pol_drift_rad_per_sqrt_s: float = 0.5
    """Polarisation random walk without Faraday mirror (rad/sqrt(s)); the
    beat visibility is |cos(angle)|."""

    # --- AOM / DDS -------------------------------------------------------------
    aom_freq_hz: float = 80e6
    """AOM centre frequency (Hz), double-passed (beat at 2x)."""
    dds_clock_hz: float = 1e9
    """DDS clock (Hz)."""
    dds_ftw_bits: int = 32
    """DDS frequency tuning word width (bits): df = ftw * clock / 2^bits."""

    # --- PZT fibre stretcher ---------------------------------------------------
    pzt_range_s: float = 2e-12
    """PZT one-way range (s), +- about mid-scale."""
    pzt_dac_bits: int = 20
    """PZT DAC resolution (bits), offset binary, mid-scale = zero."""
    pzt_resonance_hz: float = 30e3
    """First mechanical resonance (Hz), second order."""
    pzt_q: float = 10.0
    """Quality factor of the resonance."""

    # --- thermal fibre spool ---------------------------------------------------
    spool_range_s: float = 50e-12
    """Spool one-way range (s), +- about mid-scale."""
    spool_dac_bits: int = 16
    """Spool DAC resolution (bits), offset binary."""
    spool_tau_s: float = 30.0
    """First-order thermal time constant (s)."""

    # --- blades ----------------------------------------------------------------
    blade_offset_max_s: float = 5e-12
    """Stored one-way offset of a blade: uniform in +- this (s)."""
    hotswap_mean_interval_s: float = 0.0
    """Mean interval (s) between blade removals, Poisson over the rack
    (0: no hot-swap)."""
    hotswap_out_min_s: float = 0.5
    """Shortest time (s) a removed blade stays out."""
    hotswap_out_max_s: float = 2.0
    """Longest time (s) a removed blade stays out."""
    hotswap_start_s: float = 1.0
    """No removal before this time (s): every blade starts present."""

    # --- numerical model -------------------------------------------------------
    n_segments: int = 1
    """Fibre segments with their own delay lines (long links); 1 = lumped."""
    internal_steps_per_tick: int = 1
    """Internal steps per tick of the segmented model (delay-line resolution
    with linear fractional-delay interpolation)."""

    # --- what the scenario must reach (DESIGN table, "must reach") -------------
    residual_band_lo_hz: float = 1.0
    """Lower edge (Hz) of the residual RMS band."""
    residual_band_hi_hz: float = 50e3
    """Upper edge (Hz) of the residual RMS band."""
    tdev_tau_s: float = 1.0
    """Averaging time (s) of the TDEV reported beside the residual."""
    bar_residual_rms_s: float | None = 10e-18
    """Out-of-loop residual RMS every channel must reach (s); None: no bar."""
    bar_slips: int | None = 0
    """Cycle slips allowed per channel."""
    bar_pzt_peak_frac: float | None = None
    """Peak PZT excursion as a fraction of its half range (None: no bar)."""
    bar_lock_time_s: float | None = None
    """Phase lock within this time (s) of a blade insertion."""
    bar_delay_limited_db: float | None = None
    """Residual PSD within this many dB of a (2 pi f tau)^2 S_fiber."""

    # ------------------------------------------------------------------ derived
    @property
    def tick_s(self) -> float:
        return 1.0 / self.loop_rate_hz

    @property
    def pzt_s_per_code(self) -> float:
        """One-way delay per PZT DAC code (s): 2 ps / 2^19 = 3.81 as."""
        return self.pzt_range_s / 2 ** (self.pzt_dac_bits - 1)

    @property
    def spool_s_per_code(self) -> float:
        """One-way delay per spool DAC code (s): 50 ps / 2^15 = 1.53 fs."""
        return self.spool_range_s / 2 ** (self.spool_dac_bits - 1)

    @property
    def aom_hz_per_ftw(self) -> float:
        """AOM frequency offset per DDS tuning-word code (Hz): 0.233 Hz."""
        return self.dds_clock_hz / 2 ** self.dds_ftw_bits

    @property
    def oneway_s_per_turn(self) -> float:
        """One-way delay of one round-trip turn (s): half an optical period."""
        return self.wavelength_m / 299_792_458.0 / 2.0

    def oneway_delay_s(self, length_m):
        """Static one-way fibre delay (s) of a link."""
        return np.asarray(length_m, float) * self.group_delay_s_per_m

    def acoustic_rms_at_s(self, length_m):
        """Acoustic one-way RMS over the band (s) of a link of length_m."""
        return self.acoustic_rms_s * np.sqrt(np.asarray(length_m, float)
                                             / self.acoustic_ref_length_m)

    def _acoustic_shape(self, f_hz):
        """1/((1+(f/a)^2)(1+(f/b)^(2n))): the acoustic PSD shape (unit at DC)."""
        f = np.asarray(f_hz, float)
        a, b = self.acoustic_corner_lo_hz, self.acoustic_corner_hi_hz
        return 1.0 / ((1.0 + (f / a) ** 2) * (1.0 + (f / b) ** (2 * self.acoustic_edge_order)))

    def _shape_band_integral_hz(self) -> float:
        """Integral over the RMS band of the acoustic shape (Hz)."""
        a, b = self.acoustic_corner_lo_hz, self.acoustic_corner_hi_hz
        f0, f1 = self.acoustic_band_lo_hz, self.acoustic_band_hi_hz
        if self.acoustic_edge_order == 1:
            # partial fractions: b^2/(b^2-a^2) / (1+(f/a)^2) - a^2/(b^2-a^2) / (1+(f/b)^2)
            ia = a * (math.atan(f1 / a) - math.atan(f0 / a))
            ib = b * (math.atan(f1 / b) - math.atan(f0 / b))
            return (b * b * ia - a * a * ib) / (b * b - a * a)
        f = np.geomspace(f0, f1, 200001)          # smooth integrand: trapezoid to < 1e-9
        return float(np.trapezoid(self._acoustic_shape(f), f))

    def acoustic_s0_s2_per_hz(self, length_m):
        """Low-frequency level S0 (s^2/Hz) of the acoustic PSD."""
        return self.acoustic_rms_at_s(length_m) ** 2 / self._shape_band_integral_hz()

    def acoustic_psd_s2_per_hz(self, f_hz, length_m):
        """One-sided acoustic one-way delay PSD (s^2/Hz)."""
        return self.acoustic_s0_s2_per_hz(length_m) * self._acoustic_shape(f_hz)

    def thermal_psd_s2_per_hz(self, f_hz, length_m):
        """One-sided PSD (s^2/Hz) of the thermal random walk (ramp excluded)."""
        f = np.asarray(f_hz, float)
        k = self.tcd_s_per_k_m * np.asarray(length_m, float) * self.temp_rw_k_per_sqrt_s
        u = self.thermal_update_ticks() * self.tick_s
        with np.errstate(divide="ignore", invalid="ignore"):
            return k * k / (2.0 * math.pi ** 2 * f * f) * np.sinc(f * u) ** 2

    def fibre_psd_s2_per_hz(self, f_hz, length_m):
        """Free-running one-way delay PSD (s^2/Hz) the rig is built to produce:
        acoustic + thermal random walk, for a link of length_m. For a folded
        long link this is S_fiber of seed 004 (the coherent low-frequency
        limit of its two passes; see sim_hw.fibre.folded_open_loop_factor)."""
        return self.acoustic_psd_s2_per_hz(f_hz, length_m) + \
            self.thermal_psd_s2_per_hz(f_hz, length_m)

    def delay_limited_psd_s2_per_hz(self, f_hz, length_m, geometry):
        """a (2 pi f tau)^2 S_fiber(f): the closed-loop floor of a long link."""
        tau = self.oneway_delay_s(length_m)
        f = np.asarray(f_hz, float)
        return WILLIAMS_A[geometry] * (2 * math.pi * f * tau) ** 2 * \
            self.fibre_psd_s2_per_hz(f, length_m)

    def thermal_update_ticks(self) -> int:
        return max(1, int(round(self.thermal_update_s * self.loop_rate_hz)))

    def photons_per_tick(self, loop_rate_hz: float | None = None) -> float:
        """Signal photons received in one tick at return_power_dbm."""
        rate = self.loop_rate_hz if loop_rate_hz is None else loop_rate_hz
        p_w = 1e-3 * 10 ** (self.return_power_dbm / 10)
        return p_w / PHOTON_ENERGY_J / rate

    def shot_noise_lsb_rms(self, loop_rate_hz: float | None = None) -> float:
        """Shot noise per quadrature (LSB): the heterodyne phase variance of a
        tick is 1/(2 eta N) rad^2 (N signal photons, strong reference), so
        sigma = A / sqrt(2 eta N). Set by the reference power, so it does not
        fall with the return: a weak or absent return sees the same noise."""
        n = self.photons_per_tick(loop_rate_hz)
        return self.adc_amplitude_lsb / math.sqrt(2.0 * self.quantum_efficiency * n)

    def iq_noise_lsb_rms(self, loop_rate_hz: float | None = None) -> float:
        """Total I/Q noise per quadrature (LSB): shot + electronic."""
        return math.hypot(self.shot_noise_lsb_rms(loop_rate_hz),
                          self.frontend_noise_lsb_rms)

    def replace(self, **changes) -> "Scenario":
        """A copy with some fields changed (dataclasses.replace)."""
        return dataclasses.replace(self, **changes)


_RACK10 = Scenario(
    name="rack10",
    description="40 rack links of 1-10 m, 100 kHz loop, bar 10 as RMS",
    geometries=("rack",), link_length_min_m=1.0, link_length_max_m=10.0,
    tcd_s_per_k_m=40e-15, temp_ramp_k_per_s=1.0 / 3600.0,
    temp_rw_k_per_sqrt_s=1e-3,
    acoustic_rms_s=1e-15, acoustic_ref_length_m=10.0, acoustic_edge_order=4,
    bar_residual_rms_s=10e-18, bar_slips=0,
)

_RACK50 = _RACK10.replace(
    name="rack50",
    description="40 rack links of 10-50 m, 100 kHz loop, bar 100 as RMS, "
                "PZT inside 80 % by the spool offload",
    link_length_min_m=10.0, link_length_max_m=50.0,
    tcd_s_per_k_m=100e-15, temp_ramp_k_per_s=1.0 / 60.0,
    temp_rw_k_per_sqrt_s=3e-3,
    acoustic_rms_s=3e-15, acoustic_ref_length_m=50.0,
    bar_residual_rms_s=100e-18, bar_pzt_peak_frac=0.8,
)

_HOTSWAP = _RACK50.replace(
    name="hotswap",
    description="rack50 with blades removed and re-inserted every few seconds "
                "(0-6 dB connector loss); lock within 100 ms of insertion",
    connector_loss_min_db=0.0, connector_loss_max_db=6.0,
    hotswap_mean_interval_s=3.0, hotswap_out_min_s=0.5, hotswap_out_max_s=2.0,
    hotswap_start_s=1.0, bar_lock_time_s=0.1,
)

# Long links. Loop rate 10 kHz: 1/(4 tau) is 2.0 kHz at 25 km and 510 Hz at
# 100 km; the delay limits the useful bandwidth to below 1/(4 tau) whatever
# the rate, and 10 kHz (the top of the table's range) keeps the per-tick phase
# step small for unwrapping (RMS 0.08 round-trip turn per tick at 100 km).
# 16 segments (a is within 1/(12 K^2) of its continuum value) and 4 internal
# steps per tick (25 us, 40 kHz: 40x the acoustic corner).
# Laser: 1 Hz, not the common 1 kHz. A Lorentzian laser writes its
# self-heterodyne noise into the forward signal through the loop,
# S = (T_opt/2)^2 dnu tau_rt^2 / pi (white, one-way s^2/Hz): for a 1 kHz laser
# this is 10 dB above the delay-unsuppressed floor at 100 km and 13 dB at
# 25 km for the fibre noise below, so the row's bar ("within 2 dB of
# a (2 pi f tau)^2 S_fiber") would be unreachable by any firmware. Long links
# use cavity-stabilised lasers (Williams 2008 and seed 004 both do); at 1 Hz
# the laser term is 17-20 dB under the floor.
_LONGHAUL = Scenario(
    name="longhaul",
    description="4 long links: 25 km and 100 km distributed, 25 km and 100 km "
                "folded single fibre; 10 kHz loop; residual within 2 dB of "
                "a (2 pi f tau)^2 S_fiber",
    n_channels=4, max_channels=4, loop_rate_hz=10e3,
    geometries=("distributed", "distributed", "folded", "folded"),
    link_length_min_m=10e3, link_length_max_m=100e3,
    link_lengths_m=(25e3, 100e3, 25e3, 100e3),
    tcd_s_per_k_m=40e-15, temp_ramp_k_per_s=0.1 / 3600.0,
    temp_rw_k_per_sqrt_s=1e-5, thermal_update_s=1.0,
    acoustic_rms_s=10e-15, acoustic_ref_length_m=100e3,
    acoustic_corner_lo_hz=1.0, acoustic_corner_hi_hz=1000.0,
    acoustic_band_lo_hz=1.0, acoustic_band_hi_hz=1000.0,
    laser_linewidth_hz=1.0,
    connector_loss_min_db=0.0, connector_loss_max_db=1.0,
    n_segments=16, internal_steps_per_tick=4,
    bar_residual_rms_s=None, bar_slips=0, bar_delay_limited_db=2.0,
)

SCENARIOS: dict[str, Scenario] = {s.name: s for s in
                                  (_RACK10, _RACK50, _HOTSWAP, _LONGHAUL)}


def get_scenario(name: str) -> Scenario:
    """The scenario called name; ValueError listing the valid names."""
    try:
        return SCENARIOS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown scenario {name!r}: valid names are "
                         f"{', '.join(sorted(SCENARIOS))}") from None


def geometry_of(scenario: Scenario, channel: int) -> str:
    """Link geometry of a channel (geometries cycled)."""
    g = scenario.geometries[channel % len(scenario.geometries)]
    if g not in GEOMETRY_CODES:
        raise ValueError(f"unknown geometry {g!r}")
    return g


def draw_blade(scenario: Scenario, rng: np.random.Generator, channel: int = 0) -> dict:
    """Parameters of a new blade: link length, connector loss, serial, offset.

    Returns dict(length_m, loss_db, serial, oneway_offset_s), the keyword
    arguments of sim_hw.rig.insert_blade. The length is the fixed one of the
    channel when the scenario has fixed lengths.
    """
    if scenario.link_lengths_m:
        length = float(scenario.link_lengths_m[channel % len(scenario.link_lengths_m)])
        rng.uniform()                       # keep the draw count fixed
    else:
        length = float(rng.uniform(scenario.link_length_min_m,
                                   scenario.link_length_max_m))
    loss = float(rng.uniform(scenario.connector_loss_min_db,
                             scenario.connector_loss_max_db))
    serial = int(rng.integers(1, 2 ** 63, dtype=np.int64)) | (1 << 63)
    offset = float(rng.uniform(-scenario.blade_offset_max_s,
                               scenario.blade_offset_max_s))
    return dict(length_m=length, loss_db=loss, serial=serial, oneway_offset_s=offset)


def hotswap_schedule(scenario: Scenario, n_channels: int, duration_s: float,
                     seed: int) -> list:
    """Blade removal/insertion events [(t_s, channel, kind, params)], by time.

    Removals form a Poisson process over the rack (mean interval
    hotswap_mean_interval_s, none before hotswap_start_s), each taking a
    random present blade; the blade comes back (a new blade: new length,
    connector loss, serial and offset from draw_blade) after a time uniform
    in [hotswap_out_min_s, hotswap_out_max_s]. kind is "remove" (params {})
    or "insert" (params = draw_blade(...)). Deterministic for a seed; empty
    if the scenario has no hot-swap.
    """
    if scenario.hotswap_mean_interval_s <= 0 or duration_s <= 0:
        return []
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5A4B, n_channels])
    back_at = np.full(n_channels, -1.0)     # >= 0: absent until then
    events = []
    t = scenario.hotswap_start_s
    while True:
        t += float(rng.exponential(scenario.hotswap_mean_interval_s))
        if t >= duration_s:
            break
        present = np.flatnonzero((back_at < 0) | (back_at <= t))
        back_at[back_at <= t] = -1.0
        if present.size == 0:
            continue
        ch = int(present[rng.integers(present.size)])
        t_back = t + float(rng.uniform(scenario.hotswap_out_min_s,
                                       scenario.hotswap_out_max_s))
        events.append((t, ch, "remove", {}))
        blade = draw_blade(scenario, rng, ch)
        if t_back < duration_s:
            events.append((t_back, ch, "insert", blade))
        back_at[ch] = t_back
    events.sort(key=lambda e: (e[0], e[1]))
    return events


def _check(s: Scenario) -> None:
    """Internal consistency of a scenario (import-time)."""
    assert s.acoustic_corner_lo_hz < s.acoustic_corner_hi_hz
    assert 1 <= s.acoustic_edge_order <= 5
    assert s.acoustic_edge_order == 1 or s.geometries == ("rack",)
    assert s.link_length_min_m <= s.link_length_max_m
    assert abs(s.oneway_s_per_turn - ONEWAY_S_PER_TURN) < 1e-27 or s.wavelength_m != 1550e-9


for _s in SCENARIOS.values():
    _check(_s)
