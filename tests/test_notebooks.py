"""Execute the notebooks headless (nbclient) on small sizes and check the plots they write.

The kernel is the interpreter running pytest: a ``python3`` kernelspec pointing at
``sys.executable`` is written to a temporary directory placed first on JUPYTER_PATH, so neither a
user-level kernelspec nor the PATH can pick another Python.
"""

import ast
import json
import struct
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest
from ipykernel import kernelspec
from jupyter_client.kernelspec import KernelSpecManager

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
PIPELINE = ROOT / "benchmarks" / "pipeline.py"
CELL_TIMEOUT = 300
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_PNG_BYTES = 5_000


def _defines_run_benchmark(path: Path) -> bool:
    """Whether ``path`` defines (or imports) a top-level ``run_benchmark``, without importing it."""
    if not path.is_file():
        return False
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name == "run_benchmark"
        ):
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "run_benchmark" for t in targets):
                return True
        if isinstance(node, ast.ImportFrom | ast.Import):
            if any((a.asname or a.name) == "run_benchmark" for a in node.names):
                return True
    return False


@pytest.fixture
def kernel_env(tmp_path_factory, monkeypatch):
    """A ``python3`` kernelspec running this interpreter, first on JUPYTER_PATH; Agg backend."""
    jupyter_dir = tmp_path_factory.mktemp("jupyter")
    kernelspec.write_kernel_spec(jupyter_dir / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] == sys.executable, spec.argv
    return monkeypatch


def _execute(name: str, out: Path) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    try:
        client.execute()
    finally:  # keep the executed notebook (with outputs) next to the plots for inspection
        nbformat.write(nb, out / f"executed_{name}")


def _assert_png(path: Path) -> None:
    assert path.is_file(), f"{path.name} was not written"
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert len(data) > MIN_PNG_BYTES, f"{path.name} is only {len(data)} bytes"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width >= 300 and height >= 200, f"{path.name} is {width}x{height}"


def _committed_results() -> list[Path]:
    found = []
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "device" in data and isinstance(data.get("rows_per_s"), dict):
            found.append(path)
    return found


@pytest.mark.slow
def test_fit_quality_notebook(kernel_env, tmp_path):
    kernel_env.setenv("GPU_VGM_NB_ROWS", "200000")
    kernel_env.setenv("GPU_VGM_NB_SAMPLE", "50000")
    kernel_env.setenv("GPU_VGM_NB_OUT", str(tmp_path))
    _execute("fit_quality.ipynb", tmp_path)
    for name in ("fit_mixture.png", "component_usage.png", "roundtrip_extremes.png"):
        _assert_png(tmp_path / name)


@pytest.mark.slow
@pytest.mark.skipif(
    not _defines_run_benchmark(PIPELINE),
    reason="benchmarks/pipeline.py lacks run_benchmark (the benchmark notebook calls it)",
)
def test_benchmark_notebook(kernel_env, tmp_path):
    rows = 300_000
    kernel_env.setenv("GPU_VGM_NB_ROWS", str(rows))
    kernel_env.setenv("GPU_VGM_NB_OUT", str(tmp_path))
    kernel_env.delenv("GPU_VGM_NB_SIZES", raising=False)
    kernel_env.delenv("GPU_VGM_NB_RESULTS", raising=False)
    _execute("benchmark.ipynb", tmp_path)
    _assert_png(tmp_path / "benchmark_rows_per_s.png")
    local = json.loads((tmp_path / "benchmark_local.json").read_text(encoding="utf-8"))
    assert [run["rows"] for run in local["runs"]] == [rows // 4, rows // 2, rows]
    for run in local["runs"]:
        assert {"io_ceiling", "original", "gpu_vgm_cpu"} <= set(run["rows_per_s"])
    committed = tmp_path / "benchmark_committed.png"
    if _committed_results():
        _assert_png(committed)
    else:
        assert not committed.exists()


@pytest.mark.slow
def test_dataframe_api_notebook(kernel_env, tmp_path):
    kernel_env.setenv("GPU_VGM_NB_ROWS", "300000")
    kernel_env.setenv("GPU_VGM_NB_OUT", str(tmp_path))
    _execute("dataframe_api.ipynb", tmp_path)  # its own cells assert the exact roundtrip
    _assert_png(tmp_path / "dataframe_api_components.png")
    assert (tmp_path / "dataframe_api_model.json").is_file()
