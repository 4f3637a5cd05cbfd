"""scripts/refresh_notebooks.py: saves a notebook with its outputs, tidied; leaves a failing one untouched."""
import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "refresh_notebooks.py"


@pytest.fixture(scope="module")
def refresher():
    spec = importlib.util.spec_from_file_location("refresh_notebooks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module._ensure_python3_kernel()
    return module


def _notebook(path, *sources):
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(notebook, path)
    return path.read_bytes()


def test_saves_outputs_and_tidies(refresher, tmp_path):
    path = tmp_path / "ok.ipynb"
    _notebook(path, "%matplotlib inline\nimport os, tempfile\nimport matplotlib.pyplot as plt",
              "print('work in', tempfile.mkdtemp(prefix='x-'))\nplt.plot([1, 2, 3]);")
    assert refresher.refresh(path) == []
    saved = nbformat.read(path, as_version=4)
    assert [c.execution_count for c in saved.cells] == [1, 2]
    stream, = [o for o in saved.cells[1].outputs if o.output_type == "stream"]
    assert stream.text == "work in $TMPDIR/x-XXXXXXXX\n", stream.text   # no run-to-run noise saved
    assert any("image/png" in o.get("data", {}) for o in saved.cells[1].outputs)
    assert not any("execution" in c.metadata for c in saved.cells)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.ipynb"]   # no staging file left behind


@pytest.mark.parametrize("source, problem", [("raise ValueError('broken')", "ValueError"),
                                             ("import sys; sys.stderr.write('oops')", "stderr"),
                                             ("print('no plot')", "no plot")])
def test_failing_notebook_is_left_unchanged(refresher, tmp_path, source, problem):
    path = tmp_path / "bad.ipynb"
    before = _notebook(path, "%matplotlib inline", source)
    problems = refresher.refresh(path)
    assert problems and any(problem in p for p in problems), problems
    assert path.read_bytes() == before
