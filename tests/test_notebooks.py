"""The notebooks under notebooks/ run top to bottom on a fresh kernel, without errors or stderr output, and plot.

Each notebook asserts its own key numbers (accuracy within a point of float, qrt vs onnxruntime within 1e-5, the
SQNR gain of the layer-debugging fix, ...), so executing it is the test. Execution happens on a copy in a temporary
directory (the kernel's working directory and TMPDIR), so nothing executed here is written into the repository.
01_quickstart runs twice where torch is installed: once exporting with torch, once with QRT_NOTEBOOK_NO_TORCH=1
forcing the onnx.helper path that machines without torch take.

The committed notebooks carry their outputs (text and plots, readable where the repository is browsed), saved by
scripts/refresh_notebooks.py: executed top to bottom in one kernel, no errors, no stderr, at least one plot, no
widget state or timing metadata, no temporary paths, small.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
from nbclient.exceptions import CellExecutionError  # noqa: E402  (after the skip checks above)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
HAVE_TORCH = importlib.util.find_spec("torch") is not None
CELL_TIMEOUT_S = 600      # per cell; whole notebooks take well under a minute on an idle 2-core machine

RUNS = [pytest.param(name, False, id=name) for name in NOTEBOOKS]
RUNS.append(pytest.param("01_quickstart.ipynb", True, id="01_quickstart.ipynb-without-torch"))


def test_expected_notebooks_present():
    assert {"01_quickstart.ipynb", "02_accuracy_size_report.ipynb", "03_layer_debugging.ipynb",
            "05_deployment_pitfalls.ipynb"} <= set(NOTEBOOKS)


MAX_NOTEBOOK_BYTES = 1_500_000   # scripts/refresh_notebooks.py refuses to save more


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_executed(name):
    """Saved by scripts/refresh_notebooks.py: every code cell ran, in order, in one kernel, and shows its outputs."""
    path = NOTEBOOK_DIR / name
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3"
    counts = [cell.execution_count for cell in notebook.cells if cell.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), \
        f"{name}: execution counts {counts}; refresh it with python scripts/refresh_notebooks.py {name}"
    errors = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if output.output_type == "error"]
    assert not errors, f"{name} was saved with an error output"
    assert not _stderr_text(notebook).strip(), f"{name} was saved with stderr output"
    assert _png_count(notebook) >= 1, f"{name} was saved without its plots"
    assert "widgets" not in notebook.metadata and not any(
        "application/vnd.jupyter.widget-view+json" in output.get("data", {})
        for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)
    assert not any("execution" in cell.metadata for cell in notebook.cells), f"{name} carries timing metadata"
    saved = path.read_text(encoding="utf-8")
    assert "qrt-notebook-" not in saved, f"{name} shows the refresh's temporary directory"
    assert len(saved.encode()) <= MAX_NOTEBOOK_BYTES, f"{name} is {len(saved.encode())} bytes with outputs"
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    assert "%matplotlib inline" in code, f"{name} does not set up inline plots"


def _ensure_python3_kernel():
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user"], check=True,
                       stdout=subprocess.DEVNULL)


def _stderr_text(notebook):
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.outputs if output.output_type == "stream" and output.name == "stderr")


def _stdout_text(notebook):
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.outputs if output.output_type == "stream" and output.name == "stdout")


def _png_count(notebook):
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs if output.output_type in ("display_data", "execute_result"))


@pytest.mark.slow
@pytest.mark.parametrize("name, force_no_torch", RUNS)
def test_notebook_executes(name, force_no_torch, tmp_path, monkeypatch):
    if name == "01_quickstart.ipynb" and not force_no_torch and not HAVE_TORCH:
        pytest.skip("torch is not installed; the -without-torch run covers this machine's path")
    _ensure_python3_kernel()
    work = tmp_path / "run"
    work.mkdir()
    copy = work / name
    shutil.copy(NOTEBOOK_DIR / name, copy)
    # The kernel inherits this environment: import qrt from this checkout, keep temporary files under tmp_path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    if force_no_torch:
        monkeypatch.setenv("QRT_NOTEBOOK_NO_TORCH", "1")
    else:
        monkeypatch.delenv("QRT_NOTEBOOK_NO_TORCH", raising=False)

    original = (NOTEBOOK_DIR / name).read_bytes()
    notebook = nbformat.read(copy, as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(work)}})
    started = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as exc:
        pytest.fail(f"{name} failed:\n{exc}")
    elapsed = time.perf_counter() - started
    print(f"{name}{' (without torch)' if force_no_torch else ''}: executed in {elapsed:.1f} s")

    errors = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if output.output_type == "error"]
    assert not errors, json.dumps(errors, default=str)[:2000]
    stderr = _stderr_text(notebook)
    assert not stderr.strip(), f"{name} wrote to stderr:\n{stderr[:2000]}"
    assert _png_count(notebook) >= 1, f"{name} shows no plot"
    assert (NOTEBOOK_DIR / name).read_bytes() == original, "executing the copy changed the committed notebook"

    if name == "01_quickstart.ipynb":
        exporter = "onnx.helper wrote" if force_no_torch or not HAVE_TORCH else "torch.onnx.export wrote"
        assert exporter in _stdout_text(notebook), f"01_quickstart did not take the {exporter.split()[0]} path"
