"""One session, many threads: every output identical to the single-threaded one.

8 threads x 200 runs on a float CNN, its QOperator and QDQ versions (onnxruntime's quantizer), a
bidirectional LSTM and a BERT encoder, each thread cycling through its own batch sizes so plans'
per-shape caches are hit from several threads at once. Exact equality: a run's kernels and work
split do not depend on which thread calls them.
"""
import os
import sys
import threading

import numpy as np
import pytest

import qrt
from model_builders import bert_encoder, classic_cnn, lstm_model
from qrt.feeds import random_feeds

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "int8"))

THREADS, RUNS = 8, 200


def _models():
    from quantized_models import ort_quantized
    return {"cnn": classic_cnn, "cnn_qoperator": lambda: ort_quantized("cnn", "QOperator", "QUInt8"),
            "cnn_qdq": lambda: ort_quantized("cnn", "QDQ", "QUInt8"), "lstm": lstm_model, "encoder": bert_encoder}


def _feeds(sess, batch, seed):
    free = {d for a in sess.get_inputs() for d in a.shape if isinstance(d, str)}
    feeds = random_feeds(sess, seed=seed, dims={d: batch if "batch" in d else 3 for d in free})
    if "seq_lens" in feeds:     # the LSTM's lengths must lie in [0, seq]: vary them over [1, 3]
        feeds["seq_lens"] = np.random.default_rng(seed).integers(1, 4, feeds["seq_lens"].shape).astype(np.int32)
    return feeds


@pytest.mark.parametrize("name", ["cnn", "cnn_qoperator", "cnn_qdq", "lstm", "encoder"])
def test_concurrent_runs_match_single_threaded_runs(name):
    sess = qrt.InferenceSession(_models()[name]().SerializeToString())
    cases = [_feeds(sess, batch, seed) for seed, batch in enumerate((1, 2, 3, 1, 2, 3, 4, 1))]
    expected = [sess.run(None, feeds) for feeds in cases]
    mismatches, errors = [], []

    def work(thread):
        try:
            for run in range(RUNS):
                case = (thread + run) % len(cases)
                for got, want in zip(sess.run(None, cases[case]), expected[case]):
                    if not np.array_equal(got, want):
                        mismatches.append((thread, run, case))
        except Exception as exc:  # reported below with the thread that hit it
            errors.append((thread, exc))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors[:3]
    assert not mismatches, mismatches[:5]
