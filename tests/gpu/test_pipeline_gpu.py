"""The GPU backend end to end: ``python -m gpu_vgm.run --backend gpu --gpus 1`` on a
LocalCUDACluster gives the CPU backend's output, and ``inverse`` restores the input.

Same model file for both backends, so any difference is the backend's; NaN, nulls, a special
value, extremes and several files with row offsets are in the input.
"""

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

from gpu_vgm import inverse, run  # noqa: E402
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


@pytest.mark.parametrize("mode", ["argmax", "sample"])
def test_gpu_backend_output_equals_cpu_backend_and_decodes(gpu_input, tmp_path, mode):
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

    assert inverse.main(["--input", str(tmp_path / "gpu"), "--output", str(tmp_path / "back")]) == 0
    back = compare(str(gpu_input), str(tmp_path / "back"), model_path=model)
    assert not any(back["mismatches"].values()), back
