"""`attobus run --inject SPEC`: fault events for the simulated rig.

Grammar (docs/inject.md has the table):

    SPEC  := EVENT { ";" EVENT }
    EVENT := KIND { KEY "=" VALUE }            (whitespace between the parts)
    KIND  := fade | remove | insert | pzt_stuck | spool_stuck | adc_glitch
           | phase_jump | asymmetry_step | detune
    keys  : ch   channel: 3 | 0-3 | 0,2,5 | all                     (required)
            t    time of the event: 0.5 | 500ms | 500000us          (required)
            dur  how long it lasts, then it is undone (optional; adc_glitch
                 default 100us; phase_jump has none: it is a step)
            and one value per kind: fade db= (dB, default 40), phase_jump fs=
            (one-way, default 0.5), asymmetry_step fs= (return path, default
            1.0), detune hz= (default 20000), insert length_m= loss_db=
            serial= offset_ps= (defaults 20 m, 0 dB, a serial drawn from the
            channel and time, 0 ps).

Example: "fade ch=3 t=0.5 dur=20ms db=30; remove ch=1 t=1; insert ch=1 t=1.5 loss_db=3"

`parse_inject(spec, n_channels, duration_s)` returns runner events
[(t_s, fn(rig_cfg, rig_st, bank))], sorted by time. Each fault event is a
`FaultEvent`: a callable with `channel`, `kind` and `flag`, the flag the bank
is expected to raise for it (decided when it is applied, from the bank's
settings and the channel's state: a fade that leaves the return above the
weak threshold, or a fault on a channel that is not locked, expects none).
The runner reports every such event with its detection time.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field


from firmware.faults import LOCKED, HOLDOVER

KINDS = {
    # kind: (value key, default, unit, default duration s or None)
    "fade": ("db", 40.0, "dB", None),
    "remove": (None, None, None, None),
    "insert": (None, None, None, None),
    "pzt_stuck": (None, None, None, None),
    "spool_stuck": (None, None, None, None),
    "adc_glitch": (None, None, None, 100e-6),
    "phase_jump": ("fs", 0.5, "fs", None),
    "asymmetry_step": ("fs", 1.0, "fs", None),
    "detune": ("hz", 20e3, "Hz", None),
}
INSERT_KEYS = {"length_m": 20.0, "loss_db": 0.0, "serial": None, "offset_ps": 0.0}
COMMON_KEYS = ("ch", "t", "dur")
_TIME = re.compile(r"^([-+0-9.eE]+)(s|ms|us)?$")


def _number(key, text):
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"--inject: {key}={text!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"--inject: {key}={text!r} is not finite")
    return v


def _time(key, text):
    m = _TIME.match(text.strip())
    if not m:
        raise ValueError(f"--inject: {key}={text!r} is not a time (e.g. 0.5, 500ms, 20us)")
    v = _number(key, m.group(1)) * {"s": 1.0, None: 1.0, "ms": 1e-3, "us": 1e-6}[m.group(2)]
    return v


def _channels(text, n):
    text = text.strip()
    if text == "all":
        return list(range(n))
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if b < a:
                    raise ValueError
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"--inject: ch={text!r}: use 3, 0-3, 0,2,5 or all") from None
    bad = [c for c in out if not 0 <= c < n]
    if bad:
        raise ValueError(f"--inject: channel {bad[0]} outside 0..{n - 1}")
    return out


@dataclass
class FaultEvent:
    """One injected fault on one channel (callable as a runner event).

    kind, channel, value (the kind's unit, see KINDS), revert: this event
    undoes an earlier one (no flag, not reported). flag: set when applied.
    """
    t_s: float
    kind: str
    channel: int | None
    value: float | None = None
    params: dict = field(default_factory=dict)
    revert: bool = False
    flag: str | None = None

    def __call__(self, rig_cfg, rig_st, bank):
        from sim_hw.rig import apply_fault, insert_blade, remove_blade
        ch = self.channel if not self.revert else self.params["ch"]
        state = int(bank.state.chan_state[ch])
        locked = state in (LOCKED, HOLDOVER)
        s = bank.settings
        k, v = self.kind, self.value
        if self.revert:
            if k == "fade":
                apply_fault(rig_st, ch, "fade", 0.0)
            elif k in ("pzt_stuck", "spool_stuck"):
                apply_fault(rig_st, ch, k, 0)
            elif k == "asymmetry_step":
                apply_fault(rig_st, ch, "asymmetry", rig_st.asym_s[ch] - v * 1e-15)
            elif k == "detune":
                apply_fault(rig_st, ch, "detune", 0.0)
            elif k == "remove":
                rig_st.present[ch] = 1
            return
        if k == "fade":
            apply_fault(rig_st, ch, "fade", v)
            amp = rig_cfg.amp_nominal_lsb * 10 ** (-(rig_st.loss_db[ch] + v) / 20)
            self.flag = "WEAK_RETURN" if (state != 0 and amp * amp < s.weak_power_codes2) else None
        elif k == "remove":
            remove_blade(rig_st, ch)
            self.flag = "LOSS_OF_LOCK" if locked else None
        elif k == "insert":
            p = self.params
            serial = p.get("serial")
            if serial is None:
                serial = (0x5E41 << 48) | (ch << 32) | (int(self.t_s * 1e6) & 0xFFFFFFFF) | (1 << 63)
            insert_blade(rig_cfg, rig_st, ch, p.get("length_m", 20.0), p.get("loss_db", 0.0),
                         int(serial), p.get("offset_ps", 0.0) * 1e-12)
            self.flag = None
        elif k in ("pzt_stuck", "spool_stuck"):
            apply_fault(rig_st, ch, k, 1)
            self.flag = ("PZT_SAT" if k == "pzt_stuck" else "SPOOL_SAT") if locked else None
        elif k == "adc_glitch":
            ticks = max(1, int(round(self.params.get("dur", 100e-6) * rig_cfg.loop_rate_hz)))
            apply_fault(rig_st, ch, "adc_glitch", ticks)
            self.flag = "ADC_OVERRANGE"
        elif k == "phase_jump":
            apply_fault(rig_st, ch, "phase_jump", v * 1e-15)
            # a fibre event of both directions: a round-trip step of 2x, seen as x one way
            big = abs(v) * 1e-15 > s.step_detect_s
            self.flag = "NONRECIPROCITY" if (state == LOCKED and big) else None
        elif k == "asymmetry_step":
            apply_fault(rig_st, ch, "asymmetry", rig_st.asym_s[ch] + v * 1e-15)
            # the return path only: a round-trip step of x, x/2 one way
            big = abs(v) * 0.5e-15 > s.step_detect_s
            self.flag = "NONRECIPROCITY" if (state == LOCKED and big) else None
        elif k == "detune":
            apply_fault(rig_st, ch, "detune", v)
            # beyond the slew limit per tick the lock is lost and the beat
            # reacquired by the AOM; below it the loop follows and the in-lock
            # frequency trim hands the beat to the AOM (no fault)
            max_turns = s.max_slew_s_per_s / s.loop_rate_hz / 2.5852e-15
            self.flag = "LOSS_OF_LOCK" if (locked and abs(v) / s.loop_rate_hz > max_turns) else None


@dataclass
class BladeEvent:
    """A scheduled blade removal or insertion (hot-swap scenario)."""
    t_s: float
    channel: int
    kind: str                        # "remove" | "insert"
    params: dict = field(default_factory=dict)
    flag: str | None = None

    def __call__(self, rig_cfg, rig_st, bank):
        from sim_hw.rig import insert_blade, remove_blade
        if self.kind == "remove":
            locked = int(bank.state.chan_state[self.channel]) in (LOCKED, HOLDOVER)
            self.flag = "LOSS_OF_LOCK" if locked else None
            remove_blade(rig_st, self.channel)
        else:
            insert_blade(rig_cfg, rig_st, self.channel, **self.params)


def parse_inject(spec: str, n_channels: int, duration_s: float) -> list:
    """Runner events [(t_s, FaultEvent)] of an --inject SPEC (see the module doc).

    ValueError names the offending event and key. Events at or after the
    run's end are refused (they would never happen)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("--inject: empty spec; e.g. 'fade ch=3 t=0.5 dur=20ms db=30'")
    events = []
    for raw in spec.split(";"):
        raw = raw.strip()
        if not raw:
            continue
        parts = raw.split()
        kind = parts[0]
        if kind not in KINDS:
            raise ValueError(f"--inject: unknown fault {kind!r}; kinds: {', '.join(KINDS)}")
        vkey, vdef, unit, ddef = KINDS[kind]
        allowed = set(COMMON_KEYS) | ({vkey} if vkey else set()) | \
            (set(INSERT_KEYS) if kind == "insert" else set())
        kv = {}
        for p in parts[1:]:
            if "=" not in p:
                raise ValueError(f"--inject: {raw!r}: expected key=value, got {p!r}")
            key, val = p.split("=", 1)
            if key not in allowed:
                raise ValueError(f"--inject: {kind} takes {', '.join(sorted(allowed))}; got {key!r}")
            if key in kv:
                raise ValueError(f"--inject: {raw!r}: {key} given twice")
            kv[key] = val
        for req in ("ch", "t"):
            if req not in kv:
                raise ValueError(f"--inject: {raw!r}: {req}= is required")
        chans = _channels(kv["ch"], n_channels)
        t = _time("t", kv["t"])
        if not 0 <= t < duration_s:
            raise ValueError(f"--inject: {raw!r}: t={t:g} s outside the run (0..{duration_s:g} s)")
        dur = _time("dur", kv["dur"]) if "dur" in kv else ddef
        if dur is not None and not dur > 0:
            raise ValueError(f"--inject: {raw!r}: dur must be > 0")
        if kind == "phase_jump" and "dur" in kv:
            raise ValueError("--inject: phase_jump is a step: it takes no dur")
        value = _number(vkey, kv[vkey]) if vkey and vkey in kv else vdef
        if kind == "fade" and value < 0:
            raise ValueError(f"--inject: fade db={value} must be >= 0")
        params = {}
        if kind == "insert":
            for key, d in INSERT_KEYS.items():
                if key in kv:
                    params[key] = int(kv[key], 0) if key == "serial" else _number(key, kv[key])
            if params.get("length_m", 20.0) <= 0:
                raise ValueError("--inject: insert length_m must be > 0")
        if kind == "adc_glitch":
            params["dur"] = dur
        for ch in chans:
            events.append((t, FaultEvent(t, kind, ch, value, dict(params))))
            if dur is not None and kind not in ("adc_glitch",) and t + dur < duration_s:
                events.append((t + dur, FaultEvent(t + dur, kind, None, value, {"ch": ch},
                                                   revert=True)))
    events.sort(key=lambda e: e[0])
    return events
