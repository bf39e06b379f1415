"""TensorBoard events without TensorFlow: framing, protobuf, resume semantics, and tensorboard's own reader."""

import importlib.util
import struct

import numpy as np
import pytest

from lts_jax.run import tensorboard as tb


def test_crc32c_check_values():
    assert tb.crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    assert tb.crc32c(b"") == 0
    assert tb.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720, B.4: 32 bytes of zeros


def test_event_round_trip():
    data = tb.encode_event(12345678901, wall_time=1.5, scalars={"reward_mean": 0.25, "params/car_type/suv": -3.0})
    ev = tb.decode_event(data)
    assert ev["step"] == 12345678901 and ev["wall_time"] == 1.5
    assert ev["scalars"] == {"reward_mean": 0.25, "params/car_type/suv": -3.0}
    assert tb.decode_event(tb.encode_event(0, file_version="brain.Event:2"))["file_version"] == "brain.Event:2"
    assert tb.decode_event(tb.encode_event(7, session_status=tb.SESSION_START))["session_status"] == 1


def test_writer_reader_and_resume_purge(tmp_path):
    with tb.EventWriter(tmp_path) as w:
        for step in range(6):
            w.scalars(step, {"a": float(step), "b": 2.0 * step})
    # A resumed session restarting at step 4 (the checkpoint) repeats steps 4, 5 with new values.
    with tb.EventWriter(tmp_path, start_step=4) as w:
        for step in range(4, 8):
            w.scalars(step, {"a": 100.0 + step})
    files = tb.event_files(tmp_path)
    assert len(files) == 2 and files[0].name < files[1].name
    scalars = tb.read_scalars(tmp_path)
    assert scalars["a"] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 104.0), (5, 105.0), (6, 106.0), (7, 107.0)]
    assert scalars["b"] == [(s, 2.0 * s) for s in range(4)]


def test_corrupt_and_truncated_records(tmp_path):
    with tb.EventWriter(tmp_path) as w:
        w.scalars(0, {"x": 1.0})
        w.scalars(1, {"x": 2.0})
    path = tb.event_files(tmp_path)[0]
    raw = path.read_bytes()
    # A record cut short (writer killed mid-write) ends the file quietly.
    path.write_bytes(raw[:-3])
    assert tb.read_scalars(tmp_path)["x"] == [(0, 1.0)]
    # A flipped byte inside a record's data is a checksum error naming the file.
    bad = bytearray(raw)
    bad[-6] ^= 0xFF
    path.write_bytes(bytes(bad))
    with pytest.raises(tb.EventFileError, match=path.name):
        tb.read_scalars(tmp_path)


def test_framing_matches_tfrecord_layout(tmp_path):
    payload = b"hello"
    rec = tb.frame_record(payload)
    assert struct.unpack("<Q", rec[:8])[0] == 5
    assert struct.unpack("<I", rec[8:12])[0] == tb.masked_crc32c(rec[:8])
    assert rec[12:17] == payload
    assert struct.unpack("<I", rec[17:])[0] == tb.masked_crc32c(payload)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_event_accumulator_reads_our_files(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    with tb.EventWriter(tmp_path) as w:
        for step in range(5):
            w.scalars(step, {"reward_mean": 0.1 * step, "params/weather/fog": 0.25})
    with tb.EventWriter(tmp_path, start_step=3) as w:
        for step in range(3, 6):
            w.scalars(step, {"reward_mean": 1.0 + step, "params/weather/fog": 0.5})
    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"reward_mean", "params/weather/fog"}
    got = [(e.step, e.value) for e in acc.Scalars("reward_mean")]
    ours = tb.read_scalars(tmp_path)["reward_mean"]
    assert [s for s, _ in got] == [s for s, _ in ours] == [0, 1, 2, 3, 4, 5]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in ours], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in got], [0.0, 0.1, 0.2, 4.0, 5.0, 6.0], rtol=1e-6)
