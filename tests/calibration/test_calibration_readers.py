"""Calibration data readers and the as_reader adapters."""
import numpy as np
import pytest

import calibration as C
from qrt.errors import QuantizationError


def _feeds(n):
    return [{"x": np.full((1, 3), i, np.float32)} for i in range(n)]


def _values(reader):
    return [int(batch["x"].ravel()[0]) for batch in reader]


def test_list_reader_iterates_and_rewinds():
    reader = C.as_reader(_feeds(3))
    assert isinstance(reader, C.CalibrationDataReader) and len(reader) == 3
    assert _values(reader) == [0, 1, 2]
    assert reader.get_next() is None
    reader.rewind()
    assert _values(reader) == [0, 1, 2]


def test_generator_reader_cannot_rewind():
    reader = C.as_reader(feed for feed in _feeds(2))
    assert _values(reader) == [0, 1]
    with pytest.raises(QuantizationError, match="one-shot iterator"):
        reader.rewind()
    assert bool(reader)     # truthiness does not depend on a length the source lacks


def test_single_feed_dict_is_one_batch():
    assert _values(C.as_reader({"x": np.zeros((1, 3), np.float32)})) == [0]


def test_objects_with_get_next_including_onnxruntime_readers():
    from onnxruntime.quantization import CalibrationDataReader as OrtReader

    class Mine(OrtReader):
        def __init__(self):
            self.data = iter(_feeds(2))

        def get_next(self):
            return next(self.data, None)

    reader = C.as_reader(Mine())
    assert isinstance(reader, C.ObjectReader)
    assert _values(reader) == [0, 1]
    with pytest.raises(QuantizationError, match="cannot rewind"):
        reader.rewind()

    class Duck:    # no base class at all
        def __init__(self):
            self.i = 0

        def get_next(self):
            self.i += 1
            return {"x": np.full((1, 3), self.i, np.float32)} if self.i <= 2 else None

        def rewind(self):
            self.i = 0

    assert isinstance(Duck(), C.CalibrationDataReader)   # the protocol, like onnxruntime's
    reader = C.as_reader(Duck())
    assert _values(reader) == [1, 2]
    reader.rewind()
    assert _values(reader) == [1, 2]
    own = C.as_reader(_feeds(1))
    assert C.as_reader(own) is own


def test_npz_batches_samples_along_the_first_axis(tmp_path):
    path = tmp_path / "calib.npz"
    x = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    mask = np.arange(7, dtype=np.int64).reshape(7, 1)
    np.savez(path, x=x, mask=mask)
    reader = C.as_reader(path, batch_size=3)
    assert isinstance(reader, C.NpzReader) and len(reader) == 3
    batches = list(reader)
    assert [b["x"].shape for b in batches] == [(3, 3), (3, 3), (1, 3)]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in batches]), mask)
    reader.rewind()
    assert len(list(reader)) == 3
    only_x = C.as_reader(str(path), input_names=["x"])
    assert len(only_x) == 7 and set(only_x.get_next()) == {"x"}


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 2)), y=np.zeros((5, 2)))
    with pytest.raises(QuantizationError, match="disagree on the number of samples"):
        C.as_reader(tmp_path / "bad.npz")
    np.savez(tmp_path / "scalar.npz", x=np.float32(1))
    with pytest.raises(QuantizationError, match="scalars"):
        C.as_reader(tmp_path / "scalar.npz")
    np.savez(tmp_path / "ok.npz", x=np.zeros((4, 2)))
    with pytest.raises(QuantizationError, match=r"no array\(s\) named \['y'\]"):
        C.as_reader(tmp_path / "ok.npz", input_names=["y"])
    with pytest.raises(QuantizationError, match="batch_size must be >= 1"):
        C.as_reader(tmp_path / "ok.npz", batch_size=0)
    with pytest.raises(QuantizationError, match="no such calibration data file"):
        C.as_reader(tmp_path / "missing.npz")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    with pytest.raises(QuantizationError, match="cannot read calibration data"):
        C.as_reader(tmp_path / "garbage.npz")


def test_npy_directory_pairs_files_by_index(tmp_path):
    for i in [0, 1, 2, 10]:       # numeric order: 10 comes last
        np.save(tmp_path / f"input_ids_{i}.npy", np.full((2, 4), i, np.int64))
        np.save(tmp_path / f"x_{i}.npy", np.full((2, 3), i, np.float32))
    (tmp_path / "notes.txt").write_text("ignored")
    reader = C.as_reader(tmp_path)
    assert isinstance(reader, C.NpyDirReader) and len(reader) == 4
    batches = list(reader)
    assert [set(b) for b in batches] == [{"input_ids", "x"}] * 4
    assert [int(b["input_ids"][0, 0]) for b in batches] == [0, 1, 2, 10]
    assert [int(b["x"][0, 0]) for b in batches] == [0, 1, 2, 10]
    reader.rewind()
    assert int(reader.get_next()["x"][0, 0]) == 0
    assert set(C.as_reader(tmp_path, input_names=["x"]).get_next()) == {"x"}


def test_npy_directory_errors(tmp_path):
    with pytest.raises(QuantizationError, match="no calibration files"):
        C.as_reader(tmp_path)
    np.save(tmp_path / "x_0.npy", np.zeros(3))
    np.save(tmp_path / "x_1.npy", np.zeros(3))
    np.save(tmp_path / "y_0.npy", np.zeros(3))
    with pytest.raises(QuantizationError, match=r"batch 1 lacks y_1\.npy"):
        C.as_reader(tmp_path)
    with pytest.raises(QuantizationError, match="batch_size applies only to .npz"):
        C.as_reader(tmp_path, batch_size=2)


def test_unusable_sources():
    with pytest.raises(QuantizationError, match="cannot read calibration data from a int"):
        C.as_reader(3)
    with pytest.raises(QuantizationError, match="cannot read calibration data from a ndarray"):
        C.as_reader(np.zeros(3))
    with pytest.raises(QuantizationError, match="must be a .npz file or a directory"):
        C.as_reader("data.csv")
    with pytest.raises(QuantizationError, match="batch_size applies only to .npz"):
        C.as_reader(_feeds(2), batch_size=4)
