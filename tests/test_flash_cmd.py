"""`attobus flash`: the controller's file store and the board's over the link.

Oracles: hal.flash_image's own parser and two-slot store on the bytes that end
up in the file or on the emulated board's flash.
"""
import json
import os
import sys

import numpy as np
import pytest

from hal import auth
from hal import flash_image as fi
from sim_hw.board import Board, BoardOptions, BoardServer, FileFlashMedium
from tools.cli import main

TOML = """
[board]
watchdog_s = 0.03
hold_s = 0.1

[thresholds]
lock_window_fs = 0.4

[channel.1]
bandwidth_hz = 1200.0

[blade."0x00000000000ABCDE"]
oneway_offset_s = 1.5e-12
"""


@pytest.fixture
def files(tmp_path):
    cfg = tmp_path / "bank.toml"
    cfg.write_text(TOML)
    return tmp_path, cfg, tmp_path / "flash.bin"


def _store(path, slot=fi.SLOT_SIZE_DEFAULT):
    return fi.TwoSlotStore(fi.FlashMedium(2 * slot, path.read_bytes()), slot)


def test_write_read_and_keep_unknown_records(files, capsys):
    tmp, cfg, flash = files
    # an image written by a newer tool: schema 2, one record this tool does not know
    newer = fi.build_image({"board": {"watchdog_s": 0.5}, "schema": 2,
                            "unknown": [(0x0123, b"\x01\x02newer")]}, 7)
    store = fi.TwoSlotStore(FileFlashMedium(flash, 2 * fi.SLOT_SIZE_DEFAULT))
    store.write(newer)
    assert main(["flash", "--flash-file", str(flash), str(cfg)]) == 0
    assert "wrote image seq 8" in capsys.readouterr().out
    act = _store(flash).read_active()
    assert act.seq == 8 and act.config["schema"] == 2
    assert act.config["unknown"] == [(0x0123, b"\x01\x02newer")]          # kept byte for byte
    assert act.config["board"] == {"watchdog_s": 0.03, "hold_s": 0.1}
    assert act.config["blades"] == {0xABCDE: 1.5e-12}
    assert main(["flash", "--read", "--flash-file", str(flash)]) == 0
    out = capsys.readouterr().out
    assert "seq 8" in out and "watchdog_s = 0.03" in out and '[blade."0x00000000000ABCDE"]' in out
    assert "kept: record type 0x0123" in out
    assert main(["flash", "--read", "--json", "--flash-file", str(flash)]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["seq"] == 8 and j["channels"]["1"] == {"bandwidth_hz": 1200.0}
    assert [s["state"] for s in j["slots"]] == ["valid", "valid"]


def test_out_of_range_refused_before_writing(files, capsys):
    tmp, cfg, flash = files
    cfg.write_text("[board]\nwatchdog_s = 100.0\n")
    assert main(["flash", "--flash-file", str(flash), str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "board.watchdog_s = 100.0: out of range [0.001, 10] s" in err
    assert not flash.exists()


def test_empty_and_corrupt_images_are_reported_not_replaced(files, capsys):
    tmp, cfg, flash = files
    assert main(["flash", "--read", "--flash-file", str(flash)]) == 1
    assert "no image written yet" in capsys.readouterr().err
    assert main(["flash", "--flash-file", str(flash), str(cfg)]) == 0
    assert main(["flash", "--flash-file", str(flash), str(cfg)]) == 0
    capsys.readouterr()
    data = bytearray(flash.read_bytes())
    data[fi.SLOT_SIZE_DEFAULT + 30] ^= 0x01                 # the newest image (slot B)
    flash.write_bytes(bytes(data))
    assert main(["flash", "--read", "--flash-file", str(flash)]) == 3
    cap = capsys.readouterr()
    assert "seq 1" in cap.out                              # the older, valid image is in use
    assert "slot B: corrupt" in cap.err and "bad_crc" in cap.err
    data[30] ^= 0x01                                       # and now the other one too
    flash.write_bytes(bytes(data))
    assert main(["flash", "--read", "--flash-file", str(flash)]) == 3
    err = capsys.readouterr().err
    assert "no valid image" in err and "slot A: corrupt" in err


def test_power_cut_in_the_file_store_leaves_the_old_image(files):
    tmp, cfg, flash = files
    size = 512
    old = fi.build_image(fi.load_toml(cfg), 1)
    new = fi.build_image({"board": {"watchdog_s": 0.07}}, 2)
    ops = size + len(new)
    for budget in (0, 1, size - 1, size, size + 1, ops - 4, ops - 1):
        if flash.exists():
            flash.unlink()
        fi.TwoSlotStore(FileFlashMedium(flash, 2 * size), size).write(old)
        m = FileFlashMedium(flash, 2 * size)
        m.power_budget = budget
        with pytest.raises(fi.PowerCut):
            fi.TwoSlotStore(m, size).write(new)
        act = fi.TwoSlotStore(FileFlashMedium(flash, 2 * size), size).read_active()
        assert act.image == old, budget                     # what the file holds after the cut


@pytest.fixture
def board(tmp_path):
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    key = tmp_path / "board.key"
    auth.save_key_file(key, auth.generate_key())
    srv = BoardServer(Board(BoardOptions(n_channels=2, link="uart12m", frame_rate_hz=250.0,
                                         board_rate_hz=5000.0,
                                         keys={0: auth.load_key_file(key)})))
    path = srv.open_pty()
    srv.start()
    yield srv, path, key
    srv.stop()
    sys.setswitchinterval(old)


def test_flash_the_board_over_the_link(files, board, capsys):
    tmp, cfg, _ = files
    srv, path, key = board
    assert main(["flash", "--hal", f"serial://{path}", "--key-file", str(key), str(cfg)]) == 0
    assert "wrote image seq 1" in capsys.readouterr().out
    act = srv.board.store.read_active()
    assert act.config["board"]["watchdog_s"] == 0.03 and act.config["blades"] == {0xABCDE: 1.5e-12}
    assert main(["flash", "--read", "--hal", f"serial://{path}"]) == 0
    assert "watchdog_s = 0.03" in capsys.readouterr().out
    other = tmp / "other.key"
    auth.save_key_file(other, auth.generate_key())
    assert main(["flash", "--hal", f"serial://{path}", "--key-file", str(other), str(cfg)]) == 2
    assert "AUTH_BAD_TAG" in capsys.readouterr().err
    assert main(["flash", "--hal", f"serial://{path}", str(cfg)]) == 2
    assert "must be signed" in capsys.readouterr().err
    assert srv.board.store.read_active().seq == 1            # nothing changed
    assert srv.board.auth_rejects["bad_tag"] == 1
