"""Bench group "startup": time from launching Python to the first bank tick done.

Each measurement is a fresh interpreter (`sys.executable -c ...`) that
imports the firmware, builds the default 40-channel `Bank` and runs one tick
(the first call loads the jitted tick from the numba cache, or compiles it).
The parent reads CLOCK_MONOTONIC just before it launches the child; the
child prints the same clock once its first tick has returned, so the figure
is launch -> first tick done (interpreter start, imports, build, JIT) and
excludes interpreter shutdown. The child also reports its own split (imports,
settings -> config build, first tick) in the note.

- cold: NUMBA_CACHE_DIR points to a new, empty temporary directory: every
  kernel the first tick needs is compiled.
- warm: the same directory, now populated by the cold run: every kernel is
  loaded from the cache. Best of 3.

quick=True skips the cold run (it compiles the whole tick, tens of seconds):
the warm figure then uses the caller's NUMBA_CACHE_DIR after one untimed
populate run, and the note says the cold run was skipped.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.bench import Row

GROUP = "startup"
ROOT = Path(__file__).resolve().parents[2]      # the repository: firmware/ is importable from here

CHILD = r"""
import time
t0 = time.monotonic()
import numpy as np
from firmware.bank import Bank
t1 = time.monotonic()
bank = Bank()
i = np.full(bank.n_channels, 16384, np.int16)
q = np.zeros(bank.n_channels, np.int16)
t2 = time.monotonic()
bank.step(i, q)
t3 = time.monotonic()
import json
print("ATTOBUS_STARTUP " + json.dumps({"done": t3, "import_s": t1 - t0, "build_s": t2 - t1,
                                       "first_tick_s": t3 - t2}))
"""


def _launch(cache_dir: str | None, timeout_s: float = 600.0) -> dict:
    """One child from launch to its first tick; returns its timings (s)."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    start = time.monotonic()
    p = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout_s)
    lines = [l for l in p.stdout.splitlines() if l.startswith("ATTOBUS_STARTUP ")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"start-up child failed (exit {p.returncode}): {tail}")
    d = json.loads(lines[-1].split(" ", 1)[1])
    d["total_s"] = d["done"] - start
    return d


def _split(d: dict) -> str:
    return (f"imports {d['import_s']:.2f} s, build {d['build_s'] * 1e3:.0f} ms, "
            f"first tick {d['first_tick_s']:.2f} s")


def run(quick: bool) -> list[Row]:
    rows: list[Row] = []
    what = "python -c: import firmware.bank, Bank() of 40 ch, one tick"
    if quick:
        _launch(None)                                   # populate the caller's cache
        warm = _launch(None)
        rows.append(Row(GROUP, "warm start to first tick", warm["total_s"], "s",
                        f"{what}; caller's NUMBA_CACHE_DIR, populated; {_split(warm)}; "
                        "cold run skipped (quick)"))
        return rows
    with tempfile.TemporaryDirectory(prefix="attobus-numba-cold-") as cache:
        cold = _launch(cache)
        warm = min((_launch(cache) for _ in range(3)), key=lambda d: d["total_s"])
    rows.append(Row(GROUP, "cold start to first tick", cold["total_s"], "s",
                    f"{what}; empty NUMBA_CACHE_DIR: the tick is compiled; {_split(cold)}"))
    rows.append(Row(GROUP, "warm start to first tick", warm["total_s"], "s",
                    f"{what}; the same cache, populated; best of 3; {_split(warm)}"))
    rows.append(Row(GROUP, "cold / warm", cold["total_s"] / warm["total_s"], "x",
                    "what the numba cache saves at power-up"))
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(f"{r.group:8s} {r.name:28s} {r.value:10.3f} {r.unit:4s} {r.note}")
