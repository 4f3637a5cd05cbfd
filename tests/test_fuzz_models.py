"""Mutated copies of three shipped models, each loaded and run by qrt in a worker process: every
one ends in a result or a QrtError, never another exception, a crash or a hang.

The mutations (benchmarks/fuzz_models.py, fixed seed: the same models every run) are byte flips,
truncations, garbage runs and structured edits of dims, dtypes, attributes, node inputs and
opsets. ``python benchmarks/fuzz_models.py --count 1000`` runs more, next to onnxruntime.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import fuzz_models  # noqa: E402


def test_mutated_models_end_in_results_or_qrt_errors():
    cases = list(fuzz_models.mutations(fuzz_models.seed_models(), count=240, seed=16))
    results = fuzz_models.run_mutations(cases, "qrt", timeout=120.0)
    bad = [(label, outcome) for label, outcome in results if outcome.split()[0] not in ("ran", "error")]
    assert not bad, bad
    counts = fuzz_models.tally(results)
    assert counts["ran"] and counts["error"]     # the mutations reach both the loader and the kernels
