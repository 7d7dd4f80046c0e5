"""`attobus flash`: write or read the configuration + calibration image.

    attobus flash CONFIG.toml                      # the controller's own two-slot store
    attobus flash --hal serial://PORT?key=K CONFIG.toml   # the board's, over the link
    attobus flash --read [--hal URL] [--json]      # print the image in use

Writing: the TOML file is validated (hal.flash_image.load_toml: unknown keys,
non-finite values and out-of-range settings are refused with the key, the
value and the range, before anything is written); the image in use is read
first, its records of types this tool does not know are carried over byte
for byte and its schema number kept if higher; the new image gets seq =
newest + 1 and goes to the other slot (erase, records, header, magic last),
then is read back. Over a link each FLASH_WRITE chunk is signed (HMAC, see
docs/protocol.md 12) and acknowledged; a NACK is reported in words.

Reading: both slots are read and checked; the active image (the valid one
with the highest seq) is printed as TOML (with --json as JSON), and every
slot that is not valid is reported. No valid image at all: the slots'
states are printed and the exit code is 3 (a fault: the board runs on its
compiled-in presets in SAFE until an image is written); nothing is ever
replaced by defaults. An erased store (nothing written yet): exit code 1.

The controller's store is a file of two slots (--flash-file, default
$ATTOBUS_FLASH or ~/.local/state/attobus/flash.bin) written through in NOR
order (sim_hw.board.FileFlashMedium), so a power cut mid-write leaves the
previous image valid as it would on the board.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from hal import flash_image as fi

EXIT_EMPTY = 1
EXIT_CORRUPT = 3


def add_parser(sub):
    f = sub.add_parser("flash", help="write or read the configuration + calibration image")
    f.add_argument("config", nargs="?", metavar="CONFIG.toml", help="configuration to write")
    f.add_argument("--hal", default=None, help="the board: serial://PORT[?key=PATH] (default: the "
                                                "controller's own store)")
    f.add_argument("--read", action="store_true", help="print the image in use")
    f.add_argument("--json", action="store_true", help="with --read: JSON instead of TOML")
    f.add_argument("--key-file", metavar="PATH", help="command key for the board (else ?key= in the URL)")
    f.add_argument("--key-id", type=int, default=None, help="key slot on the board (default 0)")
    f.add_argument("--flash-file", metavar="PATH", default=None,
                   help="the controller's store (default $ATTOBUS_FLASH or ~/.local/state/attobus/flash.bin)")
    f.add_argument("--slot-size", type=int, default=fi.SLOT_SIZE_DEFAULT, help="bytes per slot (default 4096)")
    return f


def default_flash_file() -> Path:
    env = os.environ.get("ATTOBUS_FLASH")
    return Path(env) if env else Path.home() / ".local" / "state" / "attobus" / "flash.bin"


# ----------------------------------------------------------------------------- stores

class LocalStore:
    """The controller's two-slot store in a file."""

    def __init__(self, path, slot_size):
        from sim_hw.board import FileFlashMedium
        self.where = str(path)
        self.store = fi.TwoSlotStore(FileFlashMedium(path, 2 * slot_size), slot_size)

    def slots(self):
        return self.store.read_slot(0), self.store.read_slot(1)

    def write(self, image: bytes) -> int:
        return self.store.write(image)

    def close(self):
        pass


class BoardStore:
    """The board's store over the link (FLASH_READ / signed FLASH_WRITE)."""

    def __init__(self, url, key_file=None, key_id=None):
        from hal import auth
        from hal.serial_backend import SerialBackend
        self.where = url
        self.b = SerialBackend.from_url(url)
        if key_file is not None:
            self.b.signer = auth.Signer(auth.load_key_file(key_file), key_id or 0)
        elif key_id is not None and self.b.signer is not None:
            self.b.signer.key_id = key_id
        self.b.open()

    def slots(self):
        return self.b.flash_read_slot(0), self.b.flash_read_slot(1)

    def write(self, image: bytes) -> int:
        self.b.flash_write(image)
        return -1

    def close(self):
        self.b.close()


def analyse_slots(a: bytes, b: bytes) -> tuple:
    """(ActiveImage or None, [SlotReport], ImageError or None) of two slot dumps."""
    size = max(len(a), len(b))
    medium = fi.FlashMedium(2 * size, a.ljust(size, b"\xff") + b.ljust(size, b"\xff"))
    store = fi.TwoSlotStore(medium, size)
    try:
        act = store.read_active()
        return act, act.reports, None
    except fi.ImageError as e:
        return None, store.scan(), e


# ----------------------------------------------------------------------------- rendering

def _fmt(v: float) -> str:
    r = repr(float(v))
    return r if math.isfinite(v) else "nan"


def to_toml(act) -> str:
    cfg = act.config
    lines = [f"# attobus flash image: seq {act.seq}, slot {'AB'[act.slot]}, {len(act.image)} bytes",
             f"schema = {cfg['schema']}"]
    for key in ("board", "thresholds"):
        if cfg.get(key):
            lines.append(f"\n[{key}]")
            lines += [f"{k} = {_fmt(v)}" for k, v in sorted(cfg[key].items())]
    for ch in sorted(cfg.get("channels", {})):
        lines.append(f"\n[channel.{ch}]")
        lines += [f"{k} = {_fmt(v)}" for k, v in sorted(cfg["channels"][ch].items())]
    for serial in sorted(cfg.get("blades", {})):
        lines.append(f'\n[blade."0x{serial:016X}"]')
        lines.append(f"oneway_offset_s = {_fmt(cfg['blades'][serial])}")
    for t, v in cfg.get("unknown", ()):
        lines.append(f"# kept: record type 0x{t:04X} ({len(v)} bytes) of a newer schema")
    return "\n".join(lines) + "\n"


def to_json(act, reports) -> dict:
    cfg = act.config
    return {"seq": act.seq, "slot": act.slot, "bytes": len(act.image), "schema": cfg["schema"],
            "board": cfg["board"], "thresholds": cfg["thresholds"],
            "channels": {str(k): v for k, v in cfg["channels"].items()},
            "blades": {f"0x{k:016X}": v for k, v in cfg["blades"].items()},
            "unknown_records": [{"type": t, "bytes": len(v)} for t, v in cfg["unknown"]],
            "slots": [r.__dict__ for r in reports]}


def _report_line(r) -> str:
    s = f"slot {'AB'[r.slot]}: {r.state}"
    if r.seq is not None:
        s += f", seq {r.seq}"
    if r.reason:
        s += f" ({r.reason}{': ' + r.detail if r.detail else ''})"
    return s


# ----------------------------------------------------------------------------- command

def flash_command(args) -> int:
    from hal.backend import BackendError
    try:
        return _flash(args)
    except BackendError as e:
        print(f"attobus flash: error: {e}", file=sys.stderr)
        return 2


def _flash(args) -> int:
    if not args.read and not args.config:
        raise ValueError("give CONFIG.toml to write, or --read")
    new_cfg = fi.load_toml(args.config) if args.config else None     # refuse before touching flash
    if args.hal:
        store = BoardStore(args.hal, args.key_file, args.key_id)
    else:
        store = LocalStore(args.flash_file or default_flash_file(), args.slot_size)
    try:
        act, reports, err = analyse_slots(*store.slots())
        if args.read:
            return _print_read(store, act, reports, err, args.json)
        if act is None and err is not None and err.reason != "empty":
            print(f"attobus flash: note: no valid image before this write ({err}); writing a new one",
                  file=sys.stderr)
        old = act.config if act is not None else {}
        new_cfg["unknown"] = list(old.get("unknown", ()))          # kept byte for byte
        new_cfg["schema"] = max(int(new_cfg.get("schema", fi.SCHEMA)), int(old.get("schema", fi.SCHEMA)))
        seq = max([r.seq for r in reports if r.seq is not None], default=0) + 1
        image = fi.build_image(new_cfg, seq)
        store.write(image)
        act2, reports2, err2 = analyse_slots(*store.slots())
        if act2 is None or act2.image != image:
            print(f"attobus flash: error: read-back differs from the image written "
                  f"({err2 or 'another image is active'})", file=sys.stderr)
            return EXIT_CORRUPT
        print(f"wrote image seq {seq} ({len(image)} bytes) to slot {'AB'[act2.slot]} of {store.where}")
        for r in act2.problems:
            print(f"  note: {_report_line(r)}")
        return 0
    finally:
        store.close()


def _print_read(store, act, reports, err, as_json) -> int:
    if act is None:
        msg = "no image written yet (both slots erased)" if err.reason == "empty" else \
            f"no valid image: {err}"
        out = {"error": msg, "slots": [r.__dict__ for r in reports]}
        if as_json:
            print(json.dumps(out))
        else:
            print(f"attobus flash: {msg}", file=sys.stderr)
            for r in reports:
                print(f"  {_report_line(r)}", file=sys.stderr)
        return EXIT_EMPTY if err.reason == "empty" else EXIT_CORRUPT
    if as_json:
        print(json.dumps(to_json(act, reports)))
    else:
        sys.stdout.write(to_toml(act))
        for r in reports:
            print(f"# {_report_line(r)}")
    bad = [r for r in reports if r.state == "corrupt"]
    if bad:
        print("attobus flash: warning: " + "; ".join(_report_line(r) for r in bad), file=sys.stderr)
        return EXIT_CORRUPT
    return 0
