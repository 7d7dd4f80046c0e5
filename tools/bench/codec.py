"""Bench group "codec": the wire protocol's per-tick frames and its CRC.

- encode: 40-channel ADC (board -> host) and DAC (host -> board) frames through
  the numba fast path (`hal.wire.Encoder`) and through the reference path
  (numpy/struct packing + crcmod + Python COBS, `encode_frame(pack_*())`),
  frames/s, wire MB/s and the ratio, side by side on the same data.
- decode: a stream of the same frames through `hal.wire.Decoder.feed` (one
  chunk holding all of them, as a serial read returns them), frames/s, MB/s.
- protocol efficiency: payload bytes / worst-case wire bytes, 40 channels.
- CRC-16/IBM-SDLC: crcmod (C extension) against the numba table kernel, on
  one 40-channel ADC frame (per-call cost) and on a 1 MiB buffer (per-byte
  cost); the ratio is numba throughput / crcmod throughput.
- COBS: Python bytes-op encoder against the numba kernel on an ADC frame.

Every jitted function is called once before timing (compiled or loaded from
the cache). quick=True: 2000 frames, a 64 KiB CRC buffer.
"""
from __future__ import annotations

import numpy as np

from hal import cobs, wire
from hal.crc16 import crc16, crc16_nb
from tools.bench import Row, best_time

GROUP = "codec"
NCH = 40


def _frames(n: int):
    rng = np.random.default_rng(20240607)
    # I/Q at half full scale, as the common rig parameters put the ADC
    i = rng.integers(-16384, 16384, (n, NCH)).astype(np.int16)
    q = rng.integers(-16384, 16384, (n, NCH)).astype(np.int16)
    pzt = rng.integers(0, 1 << 20, (n, NCH)).astype(np.uint32)
    spool = rng.integers(0, 1 << 16, (n, NCH)).astype(np.uint16)
    dds = rng.integers(-(1 << 20), 1 << 20, (n, NCH)).astype(np.int32)
    return i, q, pzt, spool, dds


def _rate_rows(rows, label, t_s, n, nbytes, note):
    rows.append(Row(GROUP, f"{label} frames/s", n / t_s, "frames/s", note))
    rows.append(Row(GROUP, f"{label} MB/s", nbytes / t_s / 1e6, "MB/s", f"wire bytes; {note}"))


def run(quick: bool) -> list[Row]:
    n = 2000 if quick else 50_000
    rep = 3 if quick else 5
    i, q, pzt, spool, dds = _frames(n)
    present = (1 << NCH) - 1
    rows: list[Row] = []

    # ---------------------------------------------------------------- encode
    enc = wire.Encoder()
    enc.adc(0, i[0], q[0], presence=present)          # warm the kernels
    enc.dac(0, pzt[0], spool[0], dds[0])

    def adc_fast():
        e = wire.Encoder()
        return [e.adc(k, i[k], q[k], presence=present) for k in range(n)]

    def adc_ref():
        return [wire.encode_frame(wire.MsgType.ADC, k, wire.pack_adc(k, i[k], q[k], 0, 0, present))
                for k in range(n)]

    def dac_fast():
        e = wire.Encoder()
        return [e.dac(k, pzt[k], spool[k], dds[k]) for k in range(n)]

    def dac_ref():
        return [wire.encode_frame(wire.MsgType.DAC, k, wire.pack_dac(k, pzt[k], spool[k], dds[k]))
                for k in range(n)]

    adc_frames = adc_fast()
    dac_frames = dac_fast()
    assert adc_frames[:50] == adc_ref()[:50] and dac_frames[:50] == dac_ref()[:50]
    adc_bytes = sum(map(len, adc_frames))
    dac_bytes = sum(map(len, dac_frames))
    for label, fast, ref, nbytes in (("ADC", adc_fast, adc_ref, adc_bytes),
                                     ("DAC", dac_fast, dac_ref, dac_bytes)):
        t_fast = best_time(fast, repeat=rep)
        t_ref = best_time(ref, repeat=max(2, rep - 2))
        _rate_rows(rows, f"encode {label} 40ch", t_fast, n, nbytes,
                   "numba kernel: pack + CRC + COBS into preallocated buffers")
        _rate_rows(rows, f"encode {label} 40ch reference", t_ref, n, nbytes,
                   "numpy/struct pack + crcmod + Python COBS")
        rows.append(Row(GROUP, f"encode {label} 40ch speed-up vs reference", t_ref / t_fast, "x",
                        "same frames, byte-identical output, side by side"))

    # ---------------------------------------------------------------- decode
    for label, frames, nbytes in (("ADC", adc_frames, adc_bytes), ("DAC", dac_frames, dac_bytes)):
        stream = b"".join(frames)

        def dec():
            d = wire.Decoder()
            out = d.feed(stream)
            assert d.stats.frames_ok == n
            return out

        dec()
        t = best_time(dec, repeat=rep)
        _rate_rows(rows, f"decode {label} 40ch", t, n, nbytes,
                   "Decoder.feed on one chunk: COBS + CRC (numba), header, sequence, numpy views")
        rows.append(Row(GROUP, f"decode {label} 40ch per frame", t / n * 1e6, "us",
                        "at 100 kHz the budget is 10 us per tick for everything"))

    # ---------------------------------------------------------------- efficiency
    for label, plen in (("ADC", wire.adc_payload_len(NCH)), ("DAC", wire.dac_payload_len(NCH))):
        rows.append(Row(GROUP, f"efficiency {label} 40ch", 100.0 * wire.efficiency(plen), "%",
                        f"payload {plen} B / worst-case wire {wire.wire_len_max(plen)} B; goal >= 80 %"))

    # ---------------------------------------------------------------- CRC
    frame = adc_frames[0][:-1]
    fa = np.frombuffer(frame, np.uint8)
    crc16_nb(fa, fa.shape[0])
    reps = 200
    t_c = best_time(lambda: [crc16(frame) for _ in range(reps)], repeat=rep) / reps
    t_n = best_time(lambda: [crc16_nb(fa, fa.shape[0]) for _ in range(reps)], repeat=rep) / reps
    rows.append(Row(GROUP, "crc16 crcmod per ADC frame", t_c * 1e6, "us", f"{len(frame)} B, C extension"))
    rows.append(Row(GROUP, "crc16 numba per ADC frame", t_n * 1e6, "us",
                    f"{len(frame)} B, table kernel called from Python (dispatch included)"))
    rows.append(Row(GROUP, "crc16 numba/crcmod throughput, ADC frame", t_c / t_n, "x",
                    "> 1: numba faster; per-call cost dominates at this size"))
    big = np.random.default_rng(1).integers(0, 256, (1 << 16) if quick else (1 << 20), dtype=np.uint8)
    bb = big.tobytes()
    assert crc16(bb) == crc16_nb(big, big.shape[0])
    t_c = best_time(lambda: crc16(bb), repeat=rep)
    t_n = best_time(lambda: crc16_nb(big, big.shape[0]), repeat=rep)
    rows.append(Row(GROUP, "crc16 crcmod bulk", len(bb) / t_c / 1e6, "MB/s", f"{len(bb)} B buffer"))
    rows.append(Row(GROUP, "crc16 numba bulk", len(bb) / t_n / 1e6, "MB/s", f"{len(bb)} B buffer"))
    rows.append(Row(GROUP, "crc16 numba/crcmod throughput, bulk", t_c / t_n, "x",
                    "same buffer, side by side; > 1: numba faster"))

    # ---------------------------------------------------------------- COBS
    body = np.frombuffer(frame, np.uint8)
    raw = cobs.decode(frame)
    ra = np.frombuffer(raw, np.uint8)
    dst = np.empty(cobs.max_encoded_len(len(raw)), np.uint8)
    cobs.encode_into(ra, len(raw), dst, 0)
    t_p = best_time(lambda: [cobs.encode(raw) for _ in range(reps)], repeat=rep) / reps
    t_k = best_time(lambda: [cobs.encode_into(ra, len(raw), dst, 0) for _ in range(reps)],
                    repeat=rep) / reps
    rows.append(Row(GROUP, "cobs encode Python per ADC frame", t_p * 1e6, "us",
                    f"{len(raw)} B with {raw.count(0)} zero bytes, bytes.split"))
    rows.append(Row(GROUP, "cobs encode numba per ADC frame", t_k * 1e6, "us",
                    "encode_into, preallocated destination, dispatch included"))
    out = np.empty(len(body), np.uint8)
    cobs.decode_into(body, 0, len(body), out)
    t_p = best_time(lambda: [cobs.decode(frame) for _ in range(reps)], repeat=rep) / reps
    t_k = best_time(lambda: [cobs.decode_into(body, 0, len(body), out) for _ in range(reps)],
                    repeat=rep) / reps
    rows.append(Row(GROUP, "cobs decode Python per ADC frame", t_p * 1e6, "us", "one step per block"))
    rows.append(Row(GROUP, "cobs decode numba per ADC frame", t_k * 1e6, "us", "decode_into"))
    return rows


if __name__ == "__main__":
    import sys
    for r in run("--quick" in sys.argv):
        print(f"{r.name:48s} {r.value:14.3f} {r.unit:9s} {r.note}")
