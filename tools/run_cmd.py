"""`attobus run`: a scenario on a backend, live table, summary, exit code."""
from __future__ import annotations

import json
import sys

import numpy as np

from firmware.faults import STATE_NAMES, flag_names
from firmware.bank import PZT_MID, SPOOL_MID
from hal.backend import parse_url
from sim_hw.scenarios import get_scenario
from tools import runner

DEFAULT_DURATION_S = 3.0


class LiveTable:
    """Progress on stderr: a redrawn table on a terminal, a line per second otherwise."""

    def __init__(self, scenario, duration_s, stream=sys.stderr):
        self.scenario, self.duration_s, self.stream = scenario, duration_s, stream
        self.tty = stream.isatty()
        self.next_t = 0.0

    def __call__(self, t_s, bank, rec, sl):
        if t_s + 1e-9 < self.next_t and t_s < self.duration_s:
            return
        self.next_t = t_s + (0.25 if self.tty else 1.0)
        st = bank.state
        truth = rec.truth[sl]
        res = np.sqrt(np.nanvar(truth, axis=0)) / 1e-18
        pzt = 100 * np.abs(st.pzt_code.astype(np.int64) - PZT_MID) / PZT_MID
        spool = 100 * np.abs(st.spool_code.astype(np.int64) - SPOOL_MID) / SPOOL_MID
        locked = int(np.sum(st.chan_state == 4))
        if not self.tty:
            print(f"t={t_s:7.2f} s  locked {locked}/{len(res)}  chunk residual max "
                  f"{np.nanmax(res):8.1f} as  PZT max {pzt.max():5.1f} %", file=self.stream, flush=True)
            return
        lines = [f"\x1b[H\x1b[2J{self.scenario.name}  t = {t_s:.2f} / {self.duration_s:.2f} s  "
                 f"locked {locked}/{len(res)}",
                 " ch  state        resid(as)  PZT %  spool %  faults"]
        for c in range(len(res)):
            lines.append(f"{c:3d}  {STATE_NAMES[st.chan_state[c]]:<11} {res[c]:9.1f}  {pzt[c]:5.1f}  "
                         f"{spool[c]:6.1f}   {','.join(flag_names(int(st.faults_live[c])))}")
        print("\n".join(lines), file=self.stream, flush=True)


def _summary(result, stream=sys.stdout):
    print(f"\n{result.scenario}: seed {result.seed}, {result.duration_s:.2f} s at "
          f"{result.loop_rate_hz / 1e3:.0f} kHz, {result.realtime_factor:.2f}x real time"
          f"{', OPEN LOOP' if result.open_loop else ''}", file=stream)
    print(" ch  state      resid(as)  TDEV1s(as)  lock(ms)  slips  PZT pk%  bar", file=stream)
    fmt = lambda v, f: "-" if v is None else format(v, f)
    for c in result.channels:
        print(f"{c.ch:3d}  {c.state:<9} {fmt(c.residual_as_rms, '10.2f')}  {fmt(c.tdev_1s_as, '10.2f')}  "
              f"{fmt(None if c.lock_time_s is None else c.lock_time_s * 1e3, '8.1f')}  {c.slips:5d}  "
              f"{fmt(None if c.pzt_peak_frac is None else 100 * c.pzt_peak_frac, '7.1f')}  "
              f"{'ok' if c.met_bar else c.why_not}", file=stream)
    res = [c.residual_as_rms for c in result.channels if c.residual_as_rms is not None]
    if res:
        print(f"residual: worst {max(res):.2f} as, median {np.median(res):.2f} as; "
              f"{sum(c.met_bar for c in result.channels)}/{len(result.channels)} channels met the bar",
              file=stream)


def run_command(args) -> int:
    scen_name = args.scenario
    hal = args.hal or f"sim://{scen_name or 'rack10'}"
    scheme, rest, params = parse_url(hal)
    if scheme not in ("sim", "serial"):
        raise ValueError(f"unknown backend scheme {scheme!r} in {hal!r}: use sim://SCENARIO or serial://PORT")
    if scheme == "sim" and set(params) - {"channels", "seed"}:
        raise ValueError(f"sim:// does not take {sorted(set(params) - {'channels', 'seed'})}; "
                         "it takes channels and seed")
    if scheme != "sim" and getattr(args, "threads", None) is not None:
        raise ValueError("--threads is for the sim:// co-simulation; a serial:// loop runs one host thread")
    if scheme == "sim":
        if scen_name and rest and rest != scen_name:
            raise ValueError(f"--scenario {scen_name} and --hal {hal} name different scenarios")
        scen_name = scen_name or rest or "rack10"
    scenario = get_scenario(scen_name or "rack10")
    n = args.channels or int(params.get("channels", scenario.n_channels))
    if n > scenario.max_channels:
        raise ValueError(f"{scenario.name} is defined for at most {scenario.max_channels} channels, got {n}")
    seed = args.seed if args.seed is not None else int(params.get("seed", 1))
    duration = args.duration or DEFAULT_DURATION_S
    events = []
    if args.inject:
        from tools.inject import parse_inject
        events = parse_inject(args.inject, n, duration)
    if scheme != "sim":
        from tools.hil import run_hil
        result, rec = run_hil(hal, scenario, duration, n, seed, args)
    else:
        live = None if args.json else LiveTable(scenario, duration)
        result, rec = runner.run_fused(scenario, duration, n, seed, open_loop=args.open_loop,
                                       progress=live, events=events,
                                       threads=getattr(args, "threads", None))
    if args.record:
        np.savez_compressed(args.record, sample_rate_hz=result.loop_rate_hz,
                            true_delay_s=rec.truth, in_loop_error_codes=rec.err,
                            pzt_code=rec.pzt, spool_code=rec.spool, state=rec.state,
                            faults_live=rec.faults,
                            state_names=np.array(STATE_NAMES),
                            faults_json=json.dumps({c.ch: c.faults for c in result.channels}))
    if args.plot:
        from tools.plots import plot_run
        chans = [int(x) for x in args.plot_channels.split(",") if x.strip()]
        plot_run(args.plot, rec, result, chans)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        _summary(result)
    return 0 if (result.all_met and not args.open_loop) else 1
