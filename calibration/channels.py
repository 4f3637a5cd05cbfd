"""Per-channel statistics of calibration tensors (the last axis is the channel axis).

:class:`ChannelAbsMaxObserver` plugs into :func:`calibration.calibrate` through its ``observers``
argument, so the same single streaming pass (one session, one run per batch) that collects ranges
collects per-channel maxima; SmoothQuant (:mod:`qrt.quantization.smoothquant`) reads them.
"""
from __future__ import annotations

import numpy as np

from qrt.errors import QuantizationError

from .observers import CalibrationMethod, Observer


class ChannelAbsMaxObserver(Observer):
    """max |x| per index of the last axis over every batch (every other axis is reduced).

    ``channel_abs_max`` is a float32 array of the channel count; the first batch fixes that count and
    a later batch with another one raises QuantizationError. ``compute_range`` is the symmetric
    whole-tensor range, so the observer also serves where a per-tensor range is read.
    """

    method = CalibrationMethod.MinMax

    def __init__(self):
        super().__init__()
        self.channel_abs_max: np.ndarray | None = None

    def update(self, array) -> None:
        values = np.asarray(array)
        if values.size == 0:
            return
        if values.ndim == 0:
            values = values.reshape(1)
        per_channel = np.abs(values.reshape(-1, values.shape[-1]).astype(np.float32, copy=False)).max(axis=0)
        if not np.isfinite(per_channel).all():
            bad = int((~np.isfinite(per_channel)).sum())
            raise QuantizationError(f"tensor contains NaN or infinite values in {bad} of its {per_channel.size} "
                                    "channels; calibration needs finite data")
        if self.channel_abs_max is None:
            self.channel_abs_max = per_channel
        elif self.channel_abs_max.shape != per_channel.shape:
            raise QuantizationError(f"the last axis has {per_channel.size} channels in this batch and "
                                    f"{self.channel_abs_max.size} in earlier ones")
        else:
            np.maximum(self.channel_abs_max, per_channel, out=self.channel_abs_max)
        self.n_updates += 1
        peak = float(per_channel.max())
        self.data_min = min(self.data_min, -peak)
        self.data_max = max(self.data_max, peak)

    def _merge(self, other):
        if other.channel_abs_max is None:
            return
        if self.channel_abs_max is None:
            self.channel_abs_max = other.channel_abs_max.copy()
        elif self.channel_abs_max.shape != other.channel_abs_max.shape:
            raise QuantizationError(f"cannot merge {other.channel_abs_max.size} channels into "
                                    f"{self.channel_abs_max.size}")
        else:
            np.maximum(self.channel_abs_max, other.channel_abs_max, out=self.channel_abs_max)
