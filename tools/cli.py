"""`attobus`: the command line (DESIGN section 7)."""
from __future__ import annotations

import argparse
import json
import os
import sys


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (v > 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive finite number")
    return v


def _int_in(lo, hi, what):
    """argparse type: an integer in lo..hi, refused with a message naming `what`."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be in {lo}..{hi}, got {v}")
        return v
    return parse


_channels = _int_in(1, 256, "channels")
_threads = _int_in(1, 64, "threads")


def build_parser():
    p = argparse.ArgumentParser(prog="attobus", description="Attosecond Bus master clock unit firmware")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run the servo bank on a scenario (default: rack10 on the sim)")
    r.add_argument("--scenario", default=None, help="rack10 | rack50 | hotswap | longhaul (default rack10)")
    r.add_argument("--hal", default=None, help="backend URL: sim://SCENARIO or serial://PORT (default sim://)")
    r.add_argument("--duration", type=_positive_float, default=None, help="simulated seconds (default 3)")
    r.add_argument("--channels", type=_channels, default=None, help="channel count (default: the scenario's)")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    r.add_argument("--open-loop", action="store_true", help="servo off: the free-running rig")
    r.add_argument("--record", metavar="FILE.npz", help="save full-rate time series")
    r.add_argument("--inject", metavar="SPEC", help="fault events, see docs/inject.md")
    r.add_argument("--plot", metavar="FILE.png", help="residual, TDEV and PSD of chosen channels")
    r.add_argument("--plot-channels", default="0", help="channels for --plot, e.g. 0,5,9")
    r.add_argument("--threads", type=_threads, default=None,
                   help="sim:// only: threads of the co-simulation, one block of channels each; "
                        "results identical for any count (default: 2 on 2+ CPUs for 8+ channels)")

    b = sub.add_parser("bench", help="benchmarks, measured side by side")
    b.add_argument("--json", action="store_true")
    b.add_argument("--quick", action="store_true", help="tiny workloads (checks the bench runs)")
    b.add_argument("--only", default=None, help="comma-separated groups")

    from tools.board_cmd import add_parser as _board_parser
    from tools.flash_cmd import add_parser as _flash_parser
    _board_parser(sub)
    _flash_parser(sub)

    v = sub.add_parser("validate", help="physics validations against theory")
    v.add_argument("--json", action="store_true")
    v.add_argument("--quick", action="store_true", help="shorter records")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "run":
            from tools.run_cmd import run_command
            return run_command(args)
        if args.cmd == "bench":
            from tools.bench_cmd import bench_command
            return bench_command(args)
        if args.cmd == "board":
            from tools.board_cmd import board_command
            return board_command(args)
        if args.cmd == "flash":
            from tools.flash_cmd import flash_command
            return flash_command(args)
        if args.cmd == "validate":
            from tools.validate import validate_command
            return validate_command(args)
    except ValueError as e:
        print(f"attobus {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
