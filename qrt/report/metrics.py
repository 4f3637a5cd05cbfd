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
    return topk_agreement(a, b, 1)


def topk_agreement(reference, test, k: int) -> float:
    """Share of rows where the reference's top class is among the test's ``k`` highest scores (last axis)."""
    reference = np.asarray(reference)
    test = np.asarray(test)
    classes = reference.shape[-1] if reference.ndim else 1
    ref_rows = reference.reshape(-1, classes)
    test_rows = test.reshape(-1, classes)
    top = ref_rows.argmax(-1)
    if k == 1:
        return float(np.mean(top == test_rows.argmax(-1)))
    k = min(k, classes)
    best_k = np.argpartition(-test_rows, k - 1, axis=-1)[:, :k]
    return float(np.mean((best_k == top[:, None]).any(-1)))


def exact_agreement(reference, test) -> float:
    """Share of elements that are equal (integer outputs: labels, token ids, decoded paths)."""
    reference = np.asarray(reference)
    test = np.asarray(test)
    if reference.shape != test.shape:
        return 0.0
    return float(np.mean(reference == test)) if reference.size else 1.0
