"""Calibration data: onnxruntime's ``CalibrationDataReader`` protocol and adapters to it.

A reader hands out one feed dict (input name -> array) per ``get_next()`` call and ``None`` when it
is exhausted, exactly as ``onnxruntime.quantization.CalibrationDataReader``; any object with a
``get_next`` method is accepted. :func:`as_reader` turns the common sources into readers:

* an object with ``get_next`` (an onnxruntime reader works unchanged);
* an iterable or iterator of feed dicts (a list, a generator, a ``torch`` DataLoader yielding dicts);
* a ``.npz`` file whose arrays are named after the model inputs, first axis = samples, grouped into
  batches of ``batch_size`` samples (the file is read into memory once);
* a directory of ``.npy`` files named ``<input_name>_<i>.npy``: file ``i`` of every input together
  form batch ``i`` (each file holds one whole batch, shaped as the model input; batches are read one
  at a time, so the directory can be larger than memory). Input names containing ``/`` cannot be
  file names; use another source for them.
"""
from __future__ import annotations

import abc
import math
import os
import re
from collections.abc import Iterable, Mapping

import numpy as np

from qrt.errors import QuantizationError


class CalibrationDataReader(abc.ABC):
    """onnxruntime's reader protocol: ``get_next() -> dict | None``; iterating yields the batches."""

    @classmethod
    def __subclasshook__(cls, subclass):
        if cls is CalibrationDataReader and callable(getattr(subclass, "get_next", None)):
            return True
        return NotImplemented

    @abc.abstractmethod
    def get_next(self) -> dict | None:
        """The next feed dict, or None when the data is exhausted."""

    def rewind(self) -> None:
        """Starts over from the first batch (readers over one-shot sources cannot)."""
        raise QuantizationError(f"{type(self).__name__} cannot rewind its data source")

    def __iter__(self):
        return self

    def __bool__(self):
        # Adapters define __len__ only when their source has one; truthiness must not depend on it.
        return True

    def __next__(self):
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch


class ObjectReader(CalibrationDataReader):
    """Wraps a foreign object with ``get_next`` (and ``rewind`` if it has one)."""

    def __init__(self, source):
        self.source = source

    def get_next(self):
        return self.source.get_next()

    def rewind(self):
        rewind = getattr(self.source, "rewind", None)
        if not callable(rewind):
            super().rewind()
        rewind()

    def __len__(self):
        return len(self.source)


class IterableReader(CalibrationDataReader):
    """Feed dicts from an iterable; rewindable when the iterable can be iterated again."""

    def __init__(self, batches: Iterable):
        self.source = batches
        self._iterator = iter(batches)
        self.rewindable = self._iterator is not batches

    def get_next(self):
        return next(self._iterator, None)

    def rewind(self):
        if not self.rewindable:
            raise QuantizationError("cannot rewind calibration data given as a one-shot iterator "
                                    "(pass a list or another re-iterable collection instead)")
        self._iterator = iter(self.source)

    def __len__(self):
        return len(self.source)


class NpzReader(CalibrationDataReader):
    """Batches of ``batch_size`` samples (first axis) from a ``.npz`` of arrays named after inputs."""

    def __init__(self, path, batch_size=1, input_names=None):
        self.path = os.fspath(path)
        batch_size = int(batch_size)
        if batch_size < 1:
            raise QuantizationError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        try:
            with np.load(self.path, allow_pickle=False) as archive:
                names = list(archive.files) if input_names is None else list(input_names)
                missing = [n for n in names if n not in archive.files]
                if missing:
                    raise QuantizationError(f"{self.path}: no array(s) named {missing}; the file holds "
                                            f"{archive.files}")
                self.arrays = {n: archive[n] for n in names}
        except (OSError, ValueError) as exc:
            raise QuantizationError(f"{self.path}: cannot read calibration data ({exc})") from None
        if not self.arrays:
            raise QuantizationError(f"{self.path}: the file holds no arrays")
        samples = {n: (a.shape[0] if a.ndim else None) for n, a in self.arrays.items()}
        if None in samples.values():
            scalars = [n for n, s in samples.items() if s is None]
            raise QuantizationError(f"{self.path}: array(s) {scalars} are scalars; every array needs a "
                                    "first axis of samples")
        if len(set(samples.values())) > 1:
            raise QuantizationError(f"{self.path}: arrays disagree on the number of samples (first axis): "
                                    f"{samples}")
        self.num_samples = next(iter(samples.values()))
        self._position = 0

    def get_next(self):
        if self._position >= self.num_samples:
            return None
        start, stop = self._position, self._position + self.batch_size
        self._position = stop
        return {n: a[start:stop] for n, a in self.arrays.items()}

    def rewind(self):
        self._position = 0

    def __len__(self):
        return math.ceil(self.num_samples / self.batch_size)


_NPY_NAME = re.compile(r"^(?P<input>.+)_(?P<index>\d+)\.npy$")


class NpyDirReader(CalibrationDataReader):
    """Batch ``i`` = ``{name: load("<name>_<i>.npy")}`` over the inputs found in a directory."""

    def __init__(self, directory, input_names=None):
        self.directory = os.fspath(directory)
        files = {}
        for entry in sorted(os.listdir(self.directory)):
            match = _NPY_NAME.match(entry)
            if match:
                files.setdefault(int(match["index"]), {})[match["input"]] = entry
        if not files:
            raise QuantizationError(f"{self.directory}: no calibration files named <input_name>_<i>.npy")
        names = set(input_names) if input_names is not None else set().union(*files.values())
        self.batches = []
        for index in sorted(files):
            missing = sorted(names - set(files[index]))
            if missing:
                raise QuantizationError(f"{self.directory}: batch {index} lacks "
                                        + ", ".join(f"{n}_{index}.npy" for n in missing))
            self.batches.append({n: os.path.join(self.directory, files[index][n]) for n in sorted(names)})
        self._position = 0

    def get_next(self):
        if self._position >= len(self.batches):
            return None
        paths = self.batches[self._position]
        self._position += 1
        try:
            return {n: np.load(p, allow_pickle=False) for n, p in paths.items()}
        except (OSError, ValueError) as exc:
            raise QuantizationError(f"{self.directory}: cannot read batch {self._position - 1} ({exc})") from None

    def rewind(self):
        self._position = 0

    def __len__(self):
        return len(self.batches)


def as_reader(source, batch_size=None, input_names=None) -> CalibrationDataReader:
    """A :class:`CalibrationDataReader` over ``source`` (see the module docstring for the forms).

    ``batch_size`` (default 1) groups the samples of a ``.npz`` file; ``input_names`` selects which
    arrays of a ``.npz`` file or ``.npy`` directory are inputs (default: all of them).
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            _no_batch_size(batch_size, "a directory of .npy files (each file is one batch)")
            return NpyDirReader(path, input_names)
        if path.endswith(".npz"):
            if not os.path.exists(path):
                raise QuantizationError(f"{path}: no such calibration data file")
            return NpzReader(path, 1 if batch_size is None else batch_size, input_names)
        raise QuantizationError(f"{path}: calibration data must be a .npz file or a directory of "
                                "<input_name>_<i>.npy files")
    if input_names is not None:
        raise QuantizationError("input_names applies only to .npz files and .npy directories")
    _no_batch_size(batch_size, f"a {type(source).__name__}")
    if isinstance(source, CalibrationDataReader) and type(source).__module__ == __name__:
        return source
    if callable(getattr(source, "get_next", None)):
        return ObjectReader(source)
    if isinstance(source, Mapping):
        return IterableReader([source])
    if isinstance(source, Iterable) and not isinstance(source, (bytes, np.ndarray)):
        return IterableReader(source)
    raise QuantizationError(f"cannot read calibration data from a {type(source).__name__}; give a "
                            "CalibrationDataReader, an iterable of feed dicts, a .npz path or a directory "
                            "of .npy files")


def _no_batch_size(batch_size, what):
    if batch_size is not None:
        raise QuantizationError(f"batch_size applies only to .npz files, not to {what}")
