"""Error metrics between a float tensor and its int8 counterpart."""
from __future__ import annotations

import numpy as np


def sqnr_db(reference, test) -> float:
    """Signal-to-quantization-noise ratio in dB: 10·log10(Σref² / Σ(ref−test)²); inf when identical."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    err = ref - np.asarray(test, dtype=np.float64).ravel()
    noise = float(np.dot(err, err))
    signal = float(np.dot(ref, ref))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * np.log10(signal / noise)


def cosine_similarity(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(np.dot(a, b) / denom) if denom else 1.0


def top1_agreement(a, b) -> float:
    """Share of rows whose arg-max over the last axis agrees (classification outputs)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim < 2:
        return float(np.argmax(a) == np.argmax(b))
    return float(np.mean(a.reshape(-1, a.shape[-1]).argmax(-1) == b.reshape(-1, b.shape[-1]).argmax(-1)))
