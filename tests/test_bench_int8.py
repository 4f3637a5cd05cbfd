"""benchmarks/bench_int8.py is a script, not a timed test: this only keeps it from rotting (the model
set, quantization, both runtimes, the ratios and the profile still work), on the smallest conv net."""
import io
import os
import re
import sys

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)

import bench_int8  # noqa: E402


def test_table_row_and_geometric_mean_for_one_conv_net():
    out = io.StringIO()
    bench_int8.benchmark(["digits_cnn"], [1], runs=2, out=out)
    text = out.getvalue()
    row = next(line for line in text.splitlines() if line.startswith("digits_cnn"))
    numbers = [float(v) for v in re.findall(r"\d+\.\d+", row)]
    assert len(numbers) == 10 and all(v > 0 for v in numbers), text    # 4 times, 4 ratios, 2 QDQ ratios
    assert "geometric mean over 1 conv nets, 1 thread(s)" in text, text


def test_profile_lists_the_int8_ops():
    out = io.StringIO()
    bench_int8.profile("digits_cnn", "qop", threads=1, runs=2, out=out)
    text = out.getvalue()
    assert "QLinearConv" in text and "ms per run" in text, text
