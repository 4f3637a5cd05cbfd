"""Calibration for qrt's quantizer: data readers, streaming range observers and range collection.

    from calibration import collect_ranges, CalibrationMethod
    ranges = collect_ranges("model.onnx", "calib.npz", method=CalibrationMethod.Percentile)

Readers follow onnxruntime's ``CalibrationDataReader`` protocol; observers keep fixed-size state
(histograms re-bin instead of storing activations), so memory does not grow with the data.
"""
from .calibrator import (CalibraterBase, MinMaxCalibrater, TensorData, TensorsData, create_calibrator,
                         load_tensors_data, save_tensors_data, write_calibration_table)
from .collect import calibrate, collect_ranges
from .observers import (KNOWN_OPTIONS, CalibrationMethod, DistributionObserver, EntropyObserver,
                        HistogramObserver, MinMaxObserver, MSEObserver, Observer, PercentileObserver,
                        make_observer)
from .readers import (CalibrationDataReader, IterableReader, NpyDirReader, NpzReader, ObjectReader,
                      as_reader)

__all__ = [
    "calibrate", "collect_ranges", "CalibrationMethod", "make_observer", "KNOWN_OPTIONS", "Observer",
    "MinMaxObserver", "HistogramObserver", "PercentileObserver", "EntropyObserver",
    "DistributionObserver", "MSEObserver", "CalibrationDataReader", "as_reader", "IterableReader",
    "NpzReader", "NpyDirReader", "ObjectReader", "CalibraterBase", "MinMaxCalibrater", "TensorData",
    "TensorsData", "create_calibrator", "load_tensors_data", "save_tensors_data", "write_calibration_table",
]
