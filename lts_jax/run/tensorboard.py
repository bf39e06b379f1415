"""TensorBoard event files without TensorFlow: a scalar writer and a reader.

TensorBoard reads ``events.out.tfevents.*`` files: TFRecord files whose records
are serialised ``tensorflow.Event`` protocol buffers. Both layers are small
enough to write by hand, so the library needs neither TensorFlow nor the
tensorboard package (``tensorboard --logdir=WORKDIR`` still shows the runs).

TFRecord framing of one record (little-endian)::

    uint64 length
    uint32 masked_crc32c(length bytes)
    bytes  data[length]
    uint32 masked_crc32c(data)

with ``masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2^32)``.

The protobuf fields used (tensorflow/core/util/event.proto, summary.proto)::

    Event        { double wall_time = 1; int64 step = 2; string file_version = 3;
                   Summary summary = 5; SessionLog session_log = 7; }
    Summary      { repeated Value value = 1; }
    Value        { string tag = 1; float simple_value = 2; }
    SessionLog   { SessionStatus status = 1; }   # START = 1, STOP = 2, CHECKPOINT = 3

Resumed runs: a writer opened at ``start_step > 0`` begins its file with a
``SessionLog.START`` event at that step. TensorBoard (file_version
``brain.Event:2``) then discards the earlier files' events with step >= start,
i.e. the iterations that ran after the last checkpoint and were run again.
:func:`read_scalars` applies the same rule.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

FILE_VERSION = "brain.Event:2"
SESSION_START, SESSION_STOP, SESSION_CHECKPOINT = 1, 2, 3
_PREFIX = "events.out.tfevents."


class EventFileError(ValueError):
    """An events file is malformed (bad length or checksum); the message names the file."""


# ----- crc32c (Castagnoli), table-driven ------------------------------------------------------------------------
def _make_table() -> list[int]:
    poly = 0x82F63B78  # reversed Castagnoli polynomial
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (check value: crc32c(b"123456789") == 0xE3069283)."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One TFRecord: length, its masked crc, the data, the data's masked crc."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


def read_records(path: str | os.PathLike) -> Iterator[bytes]:
    """The records of a TFRecord file, checksums verified.

    A truncated last record (a writer killed mid-write) ends the iteration
    quietly, as TensorBoard does; a checksum mismatch raises EventFileError.
    """
    path = Path(path)
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            if struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
                raise EventFileError(f"{path}: corrupt record length at byte {f.tell() - 12}")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                return
            if struct.unpack("<I", footer)[0] != masked_crc32c(data):
                raise EventFileError(f"{path}: corrupt record data at byte {f.tell() - length - 4}")
            yield data


# ----- protobuf encoding (only what Event needs) ----------------------------------------------------------------
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negative int64
    out = bytearray()
    while True:
        bits = n & 0x7F
        n >>= 7
        if n:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _len_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def encode_event(
    step: int,
    *,
    wall_time: float | None = None,
    scalars: Mapping[str, float] | None = None,
    file_version: str | None = None,
    session_status: int | None = None,
) -> bytes:
    """A serialised Event with scalar summaries (``simple_value``) or a file version or a session log."""
    out = _key(1, 1) + struct.pack("<d", time.time() if wall_time is None else wall_time)
    out += _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _len_field(3, file_version.encode())
    if scalars:
        values = b"".join(
            _len_field(1, _len_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", float(v)))
            for tag, v in scalars.items()
        )
        out += _len_field(5, values)
    if session_status is not None:
        out += _len_field(7, _key(1, 0) + _varint(session_status))
    return out


# ----- protobuf decoding ----------------------------------------------------------------------------------------
def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, raw value) of a serialised message."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def decode_event(data: bytes) -> dict[str, Any]:
    """A serialised Event -> ``{"wall_time", "step", "file_version"?, "scalars"?, "session_status"?}``."""
    event: dict[str, Any] = {"wall_time": 0.0, "step": 0}
    for field, wire, value in _fields(data):
        if field == 1 and wire == 1:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif field == 2 and wire == 0:
            event["step"] = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 3 and wire == 2:
            event["file_version"] = value.decode()
        elif field == 5 and wire == 2:
            scalars = event.setdefault("scalars", {})
            for vf, _, vbuf in _fields(value):
                if vf != 1:
                    continue
                tag, simple = None, None
                for f2, w2, v2 in _fields(vbuf):
                    if f2 == 1 and w2 == 2:
                        tag = v2.decode()
                    elif f2 == 2 and w2 == 5:
                        simple = struct.unpack("<f", v2)[0]
                if tag is not None and simple is not None:
                    scalars[tag] = simple
        elif field == 7 and wire == 2:
            for f2, w2, v2 in _fields(value):
                if f2 == 1 and w2 == 0:
                    event["session_status"] = v2
    return event


# ----- files ----------------------------------------------------------------------------------------------------
def event_files(logdir: str | os.PathLike) -> list[Path]:
    """The events files directly in ``logdir``, in the order TensorBoard reads them (by name)."""
    logdir = Path(logdir)
    if not logdir.is_dir():
        return []
    return sorted(p for p in logdir.iterdir() if p.name.startswith(_PREFIX) and p.is_file())


def _next_file_name(logdir: Path) -> str:
    # TensorBoard reads a directory's events files in name order, so a new
    # session's file must sort after every earlier one even within one second.
    stamp = int(time.time())
    for p in event_files(logdir):
        parts = p.name[len(_PREFIX) :].split(".")
        if parts and parts[0].isdigit():
            stamp = max(stamp, int(parts[0]) + 1)
    host = socket.gethostname().replace(".", "_") or "host"
    return f"{_PREFIX}{stamp:010d}.{host}.{os.getpid()}"


class EventWriter:
    """Appends scalar summaries to a new events file in ``logdir``.

    Args:
      logdir: directory of the file (the workdir).
      start_step: the first step this writer will log; > 0 marks a resumed run
        (a SessionLog.START at that step makes TensorBoard drop the earlier
        files' events from that step on).

    Raises OSError (with the file name) when the file cannot be created or written.
    """

    def __init__(self, logdir: str | os.PathLike, start_step: int = 0):
        self.logdir = Path(logdir)
        self.path = self.logdir / _next_file_name(self.logdir)
        self._f = open(self.path, "ab")
        self._write(encode_event(0, file_version=FILE_VERSION))
        if start_step > 0:
            self._write(encode_event(start_step, session_status=SESSION_START))
        self.flush()

    def _write(self, event: bytes) -> None:
        self._f.write(frame_record(event))

    def scalars(self, step: int, values: Mapping[str, float], wall_time: float | None = None) -> None:
        """Logs ``{tag: value}`` at ``step`` (non-finite values are written as they are)."""
        if values:
            self._write(encode_event(step, wall_time=wall_time, scalars=values))

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_events(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The decoded events of one file."""
    return [decode_event(r) for r in read_records(path)]


def read_scalars(logdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of every events file in ``logdir``, read as TensorBoard does.

    Files are read in name order; a SessionLog.START at step s discards the
    values read so far with step >= s (the iterations a resumed run repeats).
    """
    out: dict[str, list[tuple[int, float]]] = {}
    for path in event_files(logdir):
        for ev in read_events(path):
            if ev.get("session_status") == SESSION_START:
                s = ev["step"]
                out = {tag: [(st, v) for st, v in vals if st < s] for tag, vals in out.items()}
            for tag, v in ev.get("scalars", {}).items():
                out.setdefault(tag, []).append((ev["step"], v))
    return out
