"""The Backend interface: what the bank's host loop talks to.

A backend moves one OutFrame to the actuators and returns the next InFrame
(`exchange`), lock-step with the tick. Backends are chosen by URL:

  sim://rack10?channels=40&seed=1       the simulated rig (lock-step)
  serial:///dev/ttyACM0 | serial://socket://host:port | serial://loop://
                                        a DAC/ADC board over pyserial
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from hal.frames import InFrame, OutFrame


@dataclass(frozen=True)
class Capabilities:
    """What a backend offers. Units in names."""
    n_channels: int
    loop_rate_hz: float
    pzt_dac_bits: int = 20
    spool_dac_bits: int = 16
    dds_ftw_bits: int = 32
    has_truth: bool = False          # provides InFrame.true_delay_s (simulation only)
    board_serial: int = 0


class BackendError(RuntimeError):
    """A backend could not be opened or lost its hardware."""


class Backend(ABC):
    capabilities: Capabilities

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def exchange(self, out: OutFrame) -> InFrame:
        """Apply `out` for the next tick and return that tick's input frame."""

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()


def parse_url(url: str):
    """-> (scheme, rest, params dict of single values)."""
    parts = urlsplit(url)
    if not parts.scheme:
        raise ValueError(f"backend URL {url!r} has no scheme (sim://... or serial://...)")
    params = {k: v[-1] for k, v in parse_qs(parts.query, strict_parsing=False).items()}
    rest = (parts.netloc + parts.path) if parts.scheme != "serial" else url[len("serial://"):].split("?")[0]
    return parts.scheme, rest, params


def open_backend(url: str, **overrides) -> Backend:
    """Create (not yet open) the backend a URL names."""
    scheme, rest, params = parse_url(url)
    params.update({k: v for k, v in overrides.items() if v is not None})
    if scheme == "sim":
        from hal.sim_backend import SimBackend
        return SimBackend.from_params(rest or "rack10", params)
    if scheme == "serial":
        from hal.serial_backend import SerialBackend
        return SerialBackend.from_params(rest, params)
    raise ValueError(f"unknown backend scheme {scheme!r} in {url!r}: use sim:// or serial://")
