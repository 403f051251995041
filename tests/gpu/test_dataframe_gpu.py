"""VGMEncoder on cudf-backed Dask DataFrames: the pandas-backed DataFrame's bits, on the
device, and an exact inverse."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("cupy", reason="no CuPy: GPU tests need an NVIDIA GPU with CuPy")
pytest.importorskip("dask_cudf", reason="no dask-cudf: cudf-backed DataFrames need it")

from gpu_vgm.backends import gpu_unavailable_reason

_REASON = gpu_unavailable_reason()
if _REASON:
    pytest.skip(f"no usable GPU: {_REASON}", allow_module_level=True)

import dask  # noqa: E402
import dask.dataframe as dd  # noqa: E402

from gpu_vgm import VGMEncoder  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory, make_heavy_tailed):
    root = tmp_path_factory.mktemp("gpu_api")
    rng = np.random.default_rng(5)
    for i in range(3):
        x = make_heavy_tailed(200_000, rng)
        x[rng.random(x.size) < 0.01] = np.nan
        table = pa.table(
            {"Amount": pa.array(x, mask=rng.random(x.size) < 0.01), "n": np.arange(x.size)}
        )
        pq.write_table(table, root / f"p{i}.parquet", row_group_size=50_000)
    return sorted(str(p) for p in root.glob("*.parquet"))


@pytest.mark.parametrize("mode", ["argmax", "sample"])
def test_cudf_partitions_give_the_pandas_bits_and_decode(files, mode):
    cpu = dd.read_parquet(files, dtype_backend="pyarrow")
    enc = VGMEncoder(columns=["Amount"], mode=mode, sample_size=20_000).fit(cpu)
    expected = enc.transform(cpu).compute()
    with dask.config.set({"dataframe.backend": "cudf"}):
        gpu = dd.read_parquet(files)
        out = enc.transform(gpu)
        got = out.compute().to_pandas()
        back = enc.inverse_transform(out).compute().to_pandas()
    for name in ("Amount_normalized", "Amount_component"):
        assert np.array_equal(
            got[name].to_numpy().view(np.uint8), expected[name].to_numpy().view(np.uint8)
        ), name
    expected_back = enc.inverse_transform(enc.transform(cpu)).compute()
    a = back["Amount"].astype("float64").to_numpy(na_value=np.nan)
    b = expected_back["Amount"].astype("float64").to_numpy(na_value=np.nan)
    assert np.array_equal(a, b, equal_nan=True)
    assert (back["Amount"].isna().to_numpy() == expected_back["Amount"].isna().to_numpy()).all()
