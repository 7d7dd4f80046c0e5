"""Bench group "serial": the closed loop over the emulated serial board, 40 channels.

For each emulated link speed (sim_hw.link: uart1m, uart12m, usbhs) the board
emulator (`attobus board --pty`, its own process) serves rack10 with 40
channels at the frame rate the link carries (sim_hw.board.default_rates), and
the host runs the bank through real pyserial (hal.serial_backend, the loop of
tools.hil: exchange + Bank.step). Figures per link:

- frames/s closed: ADC frames answered per wall second, against the frame
  rate the board offers (the ratio says whether this host keeps up);
- loop delay p50 / p99: the board-clock time from an ADC frame's production
  to the arrival of the DAC frame answering it (PONG age): link wire time
  both ways, transport latency, the host's computation;
- skipped: frames the host never answered because a newer one was waiting.

Plus the unpaced pseudo-terminal ("pty" profile, 10 kHz offered): the
software ceiling of this host and emulator. Protocol efficiency: payload
bytes / wire bytes of the ADC and DAC frames actually exchanged (header, CRC,
COBS and delimiter are the overhead); target >= 80 %.

The emulator runs as a subprocess so it does not share the host's GIL.
quick=True: the emulator in a thread, 0.3 s per link, no bank (checks the
bench runs; not a figure to quote).
"""
from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from hal.frames import OutFrame
from hal.serial_backend import CommTimeout, SerialBackend
from tools.bench import Row

GROUP = "serial"
NCH = 40
LINKS = (("uart1m", None), ("uart12m", None), ("usbhs", None), ("pty", 10_000.0))


def _emulator(link, rate, quick):
    if quick:
        from sim_hw.board import Board, BoardOptions, BoardServer
        srv = BoardServer(Board(BoardOptions(n_channels=NCH, link=link, frame_rate_hz=rate,
                                             board_rate_hz=None)))
        path = srv.open_pty()
        srv.start()

        def stop():
            srv.stop()
            return {"overrun_frames": srv.board.overrun_frames}
        return path, stop
    args = [sys.executable, "-m", "tools.cli", "board", "--pty", "--channels", str(NCH),
            "--link", link, "--duration", "120"]
    if rate:
        args += ["--frame-rate", str(rate)]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root)
    path = p.stdout.readline().strip()

    def stop():
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
        try:
            return json.loads(err.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {}
    return path, stop


def _session(link, rate, seconds, quick):
    path, stop = _emulator(link, rate, quick)
    try:
        b = SerialBackend(path, ping_every=8)
        b.open()
        offered = b.frame_rate_hz
        bank = None
        if not quick:
            from firmware.bank import Bank
            from sim_hw.scenarios import get_scenario
            from tools.hil import bank_settings_for_link
            bank = Bank(bank_settings_for_link(get_scenario("rack10"), NCH, offered, 1.5)[0])
        out = OutFrame.mid_scale(NCH)
        if bank is not None:
            z = np.zeros(NCH, np.int16)
            bank.step(z, z)                               # loaded before the loop, not in it
        t_settle = time.perf_counter() + 0.2              # settle: past the backlog of open()
        while time.perf_counter() < t_settle:
            try:
                f = b.exchange(out)
                if bank is not None:
                    out.pzt_code, out.spool_code, out.aom_ftw = bank.step(f.adc_i, f.adc_q)
            except CommTimeout:
                pass
        gc.collect()
        gc.freeze()
        b.latency.clear()
        b.skipped = 0
        b.payload_bytes = {"in": 0, "out": 0}
        b.wire_bytes = {"in": 0, "out": 0}
        n = 0
        c0 = time.process_time()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            try:
                f = b.exchange(out)
            except CommTimeout:
                continue
            n += 1
            if bank is not None:
                out.pzt_code, out.spool_code, out.aom_ftw = bank.step(f.adc_i, f.adc_q)
        wall = time.perf_counter() - t0
        host_cpu = (time.process_time() - c0) / wall
        lat = b.latency_summary()
        ages = [s.age_s for s in b.latency if s.age_s is not None]
        eff = {k: b.payload_bytes[k] / b.wire_bytes[k] for k in ("in", "out") if b.wire_bytes[k]}
        res = dict(offered=offered, closed=n / wall, skipped=b.skipped / max(n + b.skipped, 1),
                   p50=np.median(ages) if ages else float("nan"),
                   p99=np.percentile(ages, 99) if ages else float("nan"),
                   rtt=lat.get("rtt_p50_s", float("nan")), eff=eff, timeouts=b.timeouts,
                   divider=b.stream_divider, board_rate=b.board_rate_hz, host_cpu=host_cpu)
        b.close()
    finally:
        board = stop() or {}
    res["overrun"] = board.get("overrun_frames", 0) / max(res["offered"] * seconds, 1)
    return res


def run(quick: bool) -> list[Row]:
    rows: list[Row] = []
    seconds = 0.3 if quick else 3.0
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    effs = {}
    try:
        for link, rate in (LINKS[1:2] if quick else LINKS):
            r = _session(link, rate, seconds, quick)
            what = (f"{link}, rack10 {NCH} ch, board {r['board_rate']:g} Hz / {r['divider']}, "
                    f"{'exchange only' if quick else 'exchange + Bank.step'}")
            rows.append(Row(GROUP, f"{link} closed-loop frames/s", r["closed"], "frames/s",
                            f"offered {r['offered']:g}/s ({100 * r['closed'] / r['offered']:.0f} %); "
                            f"skipped by the host {100 * r['skipped']:.1f} %, not produced in time by "
                            f"the emulator ~{100 * r['overrun']:.0f} %, {r['timeouts']} comm timeouts; "
                            f"host loop CPU {100 * r['host_cpu']:.0f} % of a core; {what}"))
            rows.append(Row(GROUP, f"{link} loop delay p50", r["p50"] * 1e3, "ms",
                            f"ADC frame produced -> DAC answer at the board (PONG age); p99 "
                            f"{r['p99'] * 1e3:.2f} ms; PING round trip {r['rtt'] * 1e3:.2f} ms"))
            effs.update({(link, k): v for k, v in r["eff"].items()})
    finally:
        sys.setswitchinterval(old)
    from hal import wire
    for k, name, plen in (("in", "ADC", wire.adc_payload_len(NCH)), ("out", "DAC", wire.dac_payload_len(NCH))):
        vals = [v for (l, kk), v in effs.items() if kk == k]
        if vals:
            rows.append(Row(GROUP, f"protocol efficiency {name} {NCH} ch", 100 * float(np.mean(vals)), "%",
                            f"payload / wire bytes of the frames exchanged ({plen} B payload); "
                            f"target >= 80 %; worst case {100 * wire.efficiency(plen):.1f} %"))
    return rows
