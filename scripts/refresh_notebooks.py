"""Re-execute the notebooks under notebooks/ and save them with their outputs, so they read where the
repository is browsed (GitHub renders the saved text and plots; nothing has to run).

    python scripts/refresh_notebooks.py               # every notebooks/*.ipynb
    python scripts/refresh_notebooks.py 03_layer_debugging.ipynb

Each notebook runs top to bottom on a fresh python3 kernel, in a temporary working directory (also its
TMPDIR), importing qrt from this checkout. A notebook that fails, writes to stderr or shows no plot is left
as it was and the script exits 1; one that succeeds is written atomically (a temporary file beside it,
then renamed), so an interrupted refresh never leaves half a notebook.

What is saved is kept small and reviewable: no per-cell timing metadata, no widget state (progress bars
are switched off with TQDM_DISABLE=1), the temporary directory's path replaced by ``$TMPDIR`` (and the random
part of directories the notebook makes there by ``XXXXXXXX``), and plots as
PNG at the inline backend's resolution. A notebook over MAX_BYTES is refused: shrink its figures instead.
Numbers that depend on the machine (latencies) stay as measured on the machine that refreshed them.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
CELL_TIMEOUT_S = 600
MAX_BYTES = 1_500_000


def _ensure_python3_kernel():
    import subprocess

    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user"], check=True,
                       stdout=subprocess.DEVNULL)


def _problems(notebook) -> list[str]:
    problems = []
    images = 0
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        for output in cell.outputs:
            if output.output_type == "error":
                problems.append(f"cell {index}: {output.ename}: {output.evalue}")
            elif output.output_type == "stream" and output.name == "stderr" and output.text.strip():
                problems.append(f"cell {index} wrote to stderr: {output.text.strip()[:300]}")
            elif output.output_type in ("display_data", "execute_result"):
                images += "image/png" in output.get("data", {})
    if not images:
        problems.append("no plot (no image/png output)")
    return problems


def _tidy(notebook, work: str):
    """Drop what changes from run to run without telling the reader anything."""
    notebook.metadata.pop("widgets", None)
    paths = re.compile(re.escape(os.path.realpath(work)) + "|" + re.escape(work))
    # a notebook's own tempfile.mkdtemp(prefix="name-") under it: the 8 random characters change every run
    random_suffix = re.compile(r"(\$TMPDIR/[^/\s'\"]*[-_])[a-z0-9_]{8}(?=[/\s'\"]|$)")

    def stable(text):
        return random_suffix.sub(r"\1XXXXXXXX", paths.sub("$TMPDIR", text))

    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        kept = []
        for output in cell.outputs:
            data = output.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                continue
            if output.output_type == "stream":
                output.text = stable(output.text)
            for mime in ("text/plain", "text/html"):
                if isinstance(data.get(mime), str):
                    data[mime] = stable(data[mime])
            kept.append(output)
        cell.outputs = kept


def refresh(path: Path) -> list[str]:
    """Execute ``path`` and save it with outputs; the problems found (the file is untouched if any)."""
    notebook = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="qrt-notebook-") as work:
        env_before = {key: os.environ.get(key) for key in ("PYTHONPATH", "TMPDIR", "TQDM_DISABLE")}
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env_before["PYTHONPATH"]] if p])
        os.environ["TMPDIR"] = work
        os.environ["TQDM_DISABLE"] = "1"
        try:
            client = NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT_S, record_timing=False,
                                    resources={"metadata": {"path": work}})
            client.execute()
        except CellExecutionError as exc:
            return [str(exc).strip().splitlines()[-1][:500]]
        finally:
            for key, value in env_before.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        _tidy(notebook, work)
    problems = _problems(notebook)
    text = nbformat.writes(notebook) + "\n"
    if len(text.encode()) > MAX_BYTES:
        problems.append(f"{len(text.encode()) / 1e6:.1f} MB with outputs, over the {MAX_BYTES / 1e6:.1f} MB limit")
    if problems:
        return problems
    nbformat.validate(notebook)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(staging, path)
    except BaseException:
        os.unlink(staging)
        raise
    return []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebook file names under notebooks/ (default: all)")
    args = parser.parse_args(argv)
    paths = [NOTEBOOK_DIR / name for name in args.names] or sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    _ensure_python3_kernel()
    failed = 0
    for path in paths:
        problems = refresh(path)
        size = path.stat().st_size / 1024
        if problems:
            failed += 1
            print(f"FAILED {path.name} (left unchanged):\n  " + "\n  ".join(problems))
        else:
            print(f"refreshed {path.name} ({size:.0f} KB)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
