"""`attobus bench [--json] [--quick] [--only a,b]`: every bench group, one table.

A group is a module of `tools.bench` exposing `run(quick) -> list[Row]`;
groups are found with pkgutil (a new module is picked up without being
registered here) and run in a stable order: the firmware tick first, then the
host paths, the kernels and the codec, then any others alphabetically.

Output: a table grouped by group (name, value, unit, note) on stdout, with a
progress line per group on stderr; or, with --json, one JSON object
`{"rows": [...], "machine": {...}, "failed": [...]}` on stdout (non-finite
values become null). Whatever a group prints goes to stderr, so stdout stays
parseable. A group that raises (or fails to import) becomes one error row and
the other groups still run; the exit code is then 1.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import pkgutil
import platform
import sys
import time
import traceback

import tools.bench as bench_pkg
from tools.bench import Row

ORDER = ("tick", "startup", "hal_loop", "phase", "analysis", "rig", "codec")


def group_names() -> list[str]:
    """Every module of tools.bench, in run order (ORDER first, then alphabetical)."""
    found = sorted(m.name for m in pkgutil.iter_modules(bench_pkg.__path__)
                   if not m.name.startswith("_"))
    rank = {name: k for k, name in enumerate(ORDER)}
    return sorted(found, key=lambda n: (rank.get(n, len(ORDER)), n))


def discover(only: str | None = None) -> list[tuple[str, object]]:
    """[(group, run)] in run order, restricted to the comma-separated `only`.

    A module that fails to import is returned with a `run` that re-raises the
    import error, so it is reported as that group's error row. A module
    without `run` is not a group. Unknown names in `only` raise ValueError.
    """
    names = group_names()
    if only is not None:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in names]
        if unknown or not wanted:
            raise ValueError(f"unknown bench group(s) {unknown or only!r}; "
                             f"groups: {', '.join(names)}")
        names = [n for n in names if n in wanted]
    groups = []
    for name in names:
        try:
            mod = importlib.import_module(f"{bench_pkg.__name__}.{name}")
        except Exception as e:                          # noqa: BLE001 - reported as a row
            groups.append((name, _raiser(e)))
            continue
        if callable(getattr(mod, "run", None)):
            groups.append((name, mod.run))
    return groups


def _raiser(exc):
    def run(quick):
        raise exc
    return run


def machine_info() -> dict:
    import numba
    import numpy
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return {"cpu_count": os.cpu_count(), "cpus_usable": usable, "cpu": cpu,
            "load_1min": load, "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "numba": numba.__version__, "numpy": numpy.__version__,
            "platform": platform.platform()}


def run_groups(groups, quick: bool, log=None):
    """Run each group; returns (rows, failed group names). Never raises for a group.
    Progress lines and anything the groups print go to `log` (default: stderr)."""
    log = log if log is not None else sys.stderr
    rows: list[Row] = []
    failed: list[str] = []
    for k, (name, run) in enumerate(groups, 1):
        print(f"bench [{k}/{len(groups)}] {name} ...", file=log, flush=True)
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(log):
                got = list(run(quick))
        except Exception as e:                          # noqa: BLE001 - one group, not the run
            failed.append(name)
            where = traceback.extract_tb(e.__traceback__)[-1]
            rows.append(Row(name, "error", float("nan"), "",
                            f"{type(e).__name__}: {e} ({os.path.basename(where.filename)}:"
                            f"{where.lineno})"))
            print(f"bench [{k}/{len(groups)}] {name} FAILED after "
                  f"{time.perf_counter() - t0:.1f} s: {type(e).__name__}: {e}", file=log, flush=True)
            continue
        rows.extend(got)
        print(f"bench [{k}/{len(groups)}] {name} done in {time.perf_counter() - t0:.1f} s, "
              f"{len(got)} rows", file=log, flush=True)
    return rows, failed


def _json_value(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _fmt(v) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "-"
    a = abs(v)
    if a != 0 and (a >= 1e6 or a < 1e-3):
        return f"{v:.3e}"
    return f"{v:.4g}" if a < 1000 else f"{v:.0f}"


def format_table(rows, machine: dict, failed) -> str:
    out = [f"attobus bench: {machine['cpu']}, {machine['cpus_usable']} usable of "
           f"{machine['cpu_count']} CPUs, Python {machine['python']}, numba {machine['numba']}, "
           f"numpy {machine['numpy']}"]
    w_name = max([len(r.name) for r in rows] + [4])
    w_unit = max([len(r.unit) for r in rows] + [4])
    group = None
    for r in rows:
        if r.group != group:
            group = r.group
            out.append(f"\n[{group}]")
            out.append(f"  {'name':<{w_name}}  {'value':>10}  {'unit':<{w_unit}}  note")
        out.append(f"  {r.name:<{w_name}}  {_fmt(r.value):>10}  {r.unit:<{w_unit}}  {r.note}")
    if failed:
        out.append(f"\nfailed groups: {', '.join(failed)}")
    return "\n".join(out)


def bench_command(args) -> int:
    groups = discover(getattr(args, "only", None))
    quick = bool(getattr(args, "quick", False))
    rows, failed = run_groups(groups, quick)
    machine = machine_info()
    if getattr(args, "json", False):
        dicts = []
        for r in rows:
            d = r.as_dict()
            d["value"] = _json_value(d["value"])
            dicts.append(d)
        print(json.dumps({"rows": dicts, "machine": machine, "quick": quick, "failed": failed}))
    else:
        print(format_table(rows, machine, failed))
    return 1 if failed else 0
