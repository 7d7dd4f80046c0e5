"""`attobus board` as its own process: on a pseudo-terminal and on a TCP port, driven
through real pyserial by the host backend."""
import json
import os
import signal
import stat
import subprocess
import sys

import pytest

from hal import auth, wire
from hal.frames import OutFrame
from hal.serial_backend import SerialBackend

ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def _start(*args):
    p = subprocess.Popen([sys.executable, "-m", "tools.cli", "board", "--channels", "2",
                          "--frame-rate", "250", "--board-rate", "5000", "--duration", "60", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    line = p.stdout.readline().strip()
    assert line, p.stderr.read()
    return p, line


def _stop(p):
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    return json.loads(err.strip().splitlines()[-1])


def test_gen_key_file(tmp_path):
    from tools.cli import main
    path = tmp_path / "k.key"
    assert main(["board", "--gen-key", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(auth.load_key_file(path)) == 32
    with pytest.raises(FileExistsError):                   # never overwrites a key
        main(["board", "--gen-key", str(path)])


def test_board_on_a_pty_as_a_process(tmp_path):
    key = tmp_path / "k.key"
    auth.save_key_file(key, auth.generate_key())
    p, path = _start("--pty", "--key-file", str(key), "--state", str(tmp_path / "state"))
    try:
        assert path.startswith("/dev/")
        b = SerialBackend(path, key=auth.load_key_file(key))
        b.open()
        assert (b.caps.n_channels, b.caps.loop_rate_hz, b.stream_divider) == (2, 5000, 20)
        assert b.caps.key_ids == 0b1
        b.configure(watchdog_ms=30)
        out = OutFrame.mid_scale(2)
        for _ in range(25):
            f = b.exchange(out)
        assert f.adc_i.dtype.name == "int16" and b.serials.all()
        b.close()
    finally:
        counters = _stop(p)
    assert counters["counters"]["rx_ok"] >= 25 and counters["auth_rejects"]["bad_tag"] == 0
    # the command counter persisted in the state directory
    assert auth.FileCounterStore(tmp_path / "state" / "auth_counter").load() >= 1
    assert (tmp_path / "state" / "flash.bin").stat().st_size == 2 * 4096


def test_board_on_a_socket_as_a_process():
    p, where = _start("--listen", "127.0.0.1:0", "--link", "uart1m")
    try:
        host, port = where.rsplit(":", 1)
        b = SerialBackend(f"socket://{host}:{port}")
        b.open()
        assert b.frame_rate_hz == 250.0
        out = OutFrame.mid_scale(2)
        for _ in range(10):
            b.exchange(out)
        b.close()
    finally:
        _stop(p)
