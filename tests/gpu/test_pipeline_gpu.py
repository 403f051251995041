"""The GPU backend end to end: ``python -m gpu_vgm.run --backend gpu --gpus 1`` on a
LocalCUDACluster gives the CPU backend's output, and ``inverse`` restores the input.

Same model file for both backends, so any difference is the backend's; NaN, nulls, a special
value, extremes and several files with row offsets are in the input. Both GPU paths run: cudf
reading and writing on the device (where cudf is installed), and host I/O.
"""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("cupy", reason="no CuPy: GPU tests need an NVIDIA GPU with CuPy")
pytest.importorskip("dask_cuda", reason="no dask-cuda: the GPU pipeline needs a LocalCUDACluster")

from gpu_vgm.backends import gpu_unavailable_reason

_REASON = gpu_unavailable_reason()  # what would make `run --backend gpu` refuse
if _REASON:
    pytest.skip(f"no usable GPU: {_REASON}", allow_module_level=True)

from gpu_vgm import backends, inverse, run  # noqa: E402
from gpu_vgm.compare import compare  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*did not converge")
ROWS_PER_FILE = 700_000


@pytest.fixture(scope="module")
def gpu_input(tmp_path_factory, make_heavy_tailed):
    root = tmp_path_factory.mktemp("gpu_pipeline")
    rng = np.random.default_rng(11)
    for i in range(3):
        x = make_heavy_tailed(ROWS_PER_FILE, rng)
        x[rng.random(x.size) < 0.01] = np.nan
        x[:3] = (-1e9, 1e9, 0.0)  # far outside the fitted components, and the special value
        nulls = rng.random(x.size) < 0.01
        pq.write_table(
            pa.table({"Amount": pa.array(x, mask=nulls), "id": np.arange(x.size) + i}),
            root / f"part-{i}.parquet",
            row_group_size=250_000,
        )
    return root


def _run(args):
    assert run.main([*args, "--quiet", "--partition-size", "500000"]) == 0


@pytest.fixture(params=["cudf", "host"])
def gpu_io(request, monkeypatch):
    """The GPU backend's two I/O paths: cudf on the device, or pyarrow on the host."""
    if request.param == "cudf":
        if not backends.cudf_available():
            pytest.skip("cudf and dask-cudf are not installed: only the host-I/O path runs")
    else:
        monkeypatch.setattr(backends, "cudf_available", lambda: False)
    return request.param


def _schema(path):
    """Field names, types and nullability of the parts (the writers' metadata differ)."""
    return pq.read_schema(next(path.glob("part-*.parquet"))).remove_metadata()


@pytest.mark.parametrize("mode", ["argmax", "sample"])
def test_gpu_backend_output_equals_cpu_backend_and_decodes(gpu_input, gpu_io, tmp_path, mode):
    common = ["--input", str(gpu_input), "--mode", mode]
    cpu = ["--output", str(tmp_path / "cpu"), "--backend", "cpu", "--workers", "2"]
    _run([*common, *cpu, "--special-values", "0"])
    model = str(tmp_path / "cpu" / "_model.json")
    _run(
        [
            *common,
            "--output",
            str(tmp_path / "gpu"),
            "--backend",
            "gpu",
            "--gpus",
            "1",
            "--model-in",
            model,
        ]
    )
    same = compare(str(tmp_path / "cpu"), str(tmp_path / "gpu"))
    assert same["rows"] == 3 * ROWS_PER_FILE
    assert not any(same["mismatches"].values()), same["mismatches"]
    manifest = json.loads((tmp_path / "gpu" / "_manifest.json").read_text())
    assert manifest["backend"] == "gpu" and manifest["io"] == (
        "cudf" if gpu_io == "cudf" else "pyarrow"
    )
    assert _schema(tmp_path / "gpu") == _schema(tmp_path / "cpu")

    assert inverse.main(["--input", str(tmp_path / "gpu"), "--output", str(tmp_path / "back")]) == 0
    back = compare(str(gpu_input), str(tmp_path / "back"), model_path=model)
    assert not any(back["mismatches"].values()), back


def test_a_row_group_larger_than_a_part_is_read_in_slices_on_the_gpu(tmp_path, gpu_io):
    """One file of one 1.5M-row row group, parts of 400k rows: the GPU reads it in chunks
    (cudf's chunked reader, or pyarrow's batches) and writes what the CPU backend writes."""
    rng = np.random.default_rng(12)
    x = np.rint(rng.lognormal(3, 1.2, 1_500_000) * 100) / 100
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"Amount": x}), tmp_path / "in" / "one.parquet", row_group_size=x.size)
    base = ["--input", str(tmp_path / "in"), "--partition-size", "400K", "--mode", "sample"]
    _run([*base, "--output", str(tmp_path / "cpu"), "--backend", "cpu", "--workers", "2"])
    model = str(tmp_path / "cpu" / "_model.json")
    _run([*base, "--output", str(tmp_path / "gpu"), "--backend", "gpu", "--model-in", model])
    same = compare(str(tmp_path / "cpu"), str(tmp_path / "gpu"))
    assert same["rows"] == x.size and not any(same["mismatches"].values()), same
    parts = json.loads((tmp_path / "gpu" / "_manifest.json").read_text())["parts"]
    assert len(parts) == 4
