"""`attobus board`: the board emulator on a pseudo-terminal or a TCP port.

    attobus board --pty [--scenario rack10] [--channels N] [--seed K] [--link uart12m]
    attobus board --listen 127.0.0.1:7700 ...
    attobus board --gen-key PATH          # a fresh command key file (0600), then exit

The first line on stdout is where the host connects: the pseudo-terminal's
path (use `--hal serial://PATH`) or HOST:PORT (`--hal serial://socket://HOST:PORT`).
The board runs until SIGINT/SIGTERM or --duration, then prints its counters
on stderr. docs/hil.md describes the options, the link profiles and the
fault specs.
"""
from __future__ import annotations

import json
import signal
import sys

from hal import auth
from sim_hw.link import PROFILES, parse_faults


def add_parser(sub):
    b = sub.add_parser("board", help="the board emulator: a scenario's rig behind the wire protocol")
    where = b.add_mutually_exclusive_group()
    where.add_argument("--pty", action="store_true", help="serve on a new pseudo-terminal (prints its path)")
    where.add_argument("--listen", metavar="HOST:PORT", help="serve on a TCP port (socket://HOST:PORT)")
    where.add_argument("--gen-key", metavar="PATH", help="write a fresh 32-byte command key (0600) and exit")
    b.add_argument("--scenario", default="rack10", help="rig scenario (default rack10)")
    b.add_argument("--channels", type=int, default=None, help="channels (default: the scenario's)")
    b.add_argument("--seed", type=int, default=1, help="rig seed (default 1)")
    b.add_argument("--link", default="uart12m", choices=sorted(PROFILES),
                   help="emulated link speed (default uart12m)")
    b.add_argument("--frame-rate", type=float, default=None, metavar="HZ",
                   help="ADC/DAC frame rate (default: what the link carries, at most 10 kHz)")
    b.add_argument("--board-rate", type=float, default=None, metavar="HZ",
                   help="front-end tick rate, a multiple of the frame rate (default: see docs/hil.md)")
    b.add_argument("--latency-us", type=float, default=None, help="one-way link latency (default: the link's)")
    b.add_argument("--truth", metavar="FILE", help="test only: write the ground truth to FILE (docs/hil.md)")
    b.add_argument("--key-file", metavar="PATH", help="provision this command key (hal.auth key file)")
    b.add_argument("--key-id", type=int, default=0, help="key slot of --key-file (0..7, default 0)")
    b.add_argument("--state", metavar="DIR", help="keep the flash and the command counter in DIR")
    b.add_argument("--fault", metavar="SPEC", help="link faults, e.g. 'garbage@1+0.5:p=0.3,off@2+0.2'")
    b.add_argument("--hotswap", action="store_true", help="remove and insert blades on the scenario's schedule")
    b.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    return b


def board_command(args) -> int:
    from sim_hw.board import Board, BoardOptions, BoardServer, PowerLost
    if args.gen_key:
        auth.save_key_file(args.gen_key, auth.generate_key())
        print(args.gen_key)
        return 0
    if not (args.pty or args.listen):
        raise ValueError("give --pty or --listen HOST:PORT (or --gen-key PATH)")
    keys = {}
    if args.key_file:
        if not 0 <= args.key_id <= auth.MAX_KEY_ID:
            raise ValueError(f"--key-id must be 0..{auth.MAX_KEY_ID}")
        keys[args.key_id] = auth.load_key_file(args.key_file)
    faults = parse_faults(args.fault) if args.fault else ()
    opts = BoardOptions(scenario=args.scenario, n_channels=args.channels, seed=args.seed,
                        link=args.link, frame_rate_hz=args.frame_rate, board_rate_hz=args.board_rate,
                        latency_s=None if args.latency_us is None else args.latency_us * 1e-6,
                        keys=keys, state_dir=args.state, truth_path=args.truth, faults=faults,
                        hotswap=args.hotswap)
    board = Board(opts)
    srv = BoardServer(board)
    if args.pty:
        where = srv.open_pty()
    else:
        host, _, port = args.listen.rpartition(":")
        try:
            h, p = srv.listen(host or "127.0.0.1", int(port))
        except ValueError:
            raise ValueError(f"--listen {args.listen!r}: expected HOST:PORT") from None
        where = f"{h}:{p}"
    print(where, flush=True)
    print(f"attobus board: {board.scenario.name}, {board.n} channels, link {board.profile.name}, "
          f"frames {board.frame_rate_hz:g} Hz, front end {board.board_rate_hz:g} Hz "
          f"(stream divider {board.divider}), keys {sorted(keys) or 'none'}", file=sys.stderr, flush=True)

    def stop(*_):
        srv._stop.set()
    signal.signal(signal.SIGTERM, stop)
    try:
        srv.serve(args.duration)
    except (KeyboardInterrupt, PowerLost):
        pass
    finally:
        srv.close()
        if srv.board.power_lost:
            print("attobus board: power lost during a flash write", file=sys.stderr)
        print(json.dumps({"counters": board.counters, "auth_rejects": board.auth_rejects,
                          "link_up": srv.up.counters, "link_down": srv.down.counters,
                          "overruns": srv.overruns, "overrun_frames": board.overrun_frames,
                          "port_dropped": srv.port_dropped}), file=sys.stderr)
    return 0
