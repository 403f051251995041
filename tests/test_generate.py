"""python -m gpu_vgm.generate: layout, determinism, the Amount distribution, --from, errors."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from gpu_vgm import atomic, generate
from gpu_vgm.atomic import atomic_directory
from gpu_vgm.errors import OutputError

SMALL = ["--rows", "20000", "--row-group-size", "5000"]


def run(*argv):
    return generate.main([str(a) for a in argv])


def parts(directory):
    return sorted(p for p in os.listdir(directory) if p.endswith(".parquet"))


def read(directory):
    return pa.concat_tables(pq.read_table(directory / p) for p in parts(directory))


def leftovers(parent, name):
    return [p for p in os.listdir(parent) if p.startswith(f"{name}.")]


# --------------------------------------------------------------------------- layout


def test_schema_files_and_row_groups(tmp_path):
    out = tmp_path / "gen"
    assert run(*SMALL, "--files", 4, "--workers", 1, "--output", out) == 0
    assert parts(out) == [f"part-{i:05d}.parquet" for i in range(4)]
    for name in parts(out):
        meta = pq.ParquetFile(out / name).metadata
        assert meta.num_rows == 5000 and meta.num_row_groups == 1
        column = meta.row_group(0).column(0)
        assert column.compression == "SNAPPY" and column.statistics.has_min_max
    table = read(out)
    assert table.schema == pa.schema([pa.field("Amount", pa.float64())])
    assert table.num_rows == 20000 and table["Amount"].null_count == 0


def test_uneven_split_and_partial_row_groups(tmp_path):
    out = tmp_path / "gen"
    assert run("--rows", 20001, "--files", 3, "--row-group-size", 5000, "--output", out) == 0
    sizes = []
    for name in parts(out):
        meta = pq.ParquetFile(out / name).metadata
        sizes.append(meta.num_rows)
        assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [5000, 1667]
    assert sizes == [6667, 6667, 6667]


def test_default_files_and_zero_rows(tmp_path):
    out = tmp_path / "empty"
    assert run("--rows", 0, "--output", out) == 0
    assert parts(out) == ["part-00000.parquet"]
    table = pq.read_table(out / "part-00000.parquet")
    assert table.num_rows == 0 and table.column_names == ["Amount"]
    assert generate.file_ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_data_whatever_workers_files_or_row_groups(tmp_path):
    a, b, c, d = (tmp_path / n for n in "abcd")
    assert run(*SMALL, "--files", 4, "--workers", 1, "--seed", 7, "--output", a) == 0
    assert run(*SMALL, "--files", 4, "--workers", 2, "--seed", 7, "--output", b) == 0
    assert run("--rows", 20000, "--files", 1, "--seed", 7, "--output", c) == 0
    assert run(*SMALL, "--files", 4, "--workers", 1, "--seed", 8, "--output", d) == 0
    for name in parts(a):
        assert pq.read_table(a / name).equals(pq.read_table(b / name))
    assert read(a).equals(read(c))
    assert not read(a).equals(read(d))


# --------------------------------------------------------------------------- distribution


def test_amount_distribution(tmp_path):
    out = tmp_path / "gen"
    assert run(*SMALL, "--files", 2, "--workers", 1, "--output", out) == 0
    x = read(out)["Amount"].to_numpy()
    assert not np.isnan(x).any() and (x >= 0).all()
    assert np.array_equal(np.round(x, 2), x)
    assert 0.003 <= np.mean(x == 0) <= 0.01
    assert x.max() == 25691.16 and np.sum(x == 25691.16) == 1
    assert 10 <= np.median(x) <= 40
    assert np.sort(x)[-2] < 25691.16


def test_cap_redraw_and_small_tables():
    values = generate.synthetic_amounts(seed=3, rows=65536, block=0, max_row=-1)
    assert values.max() <= 25691.15 and np.array_equal(np.round(values, 2), values)
    assert generate.max_position(0, 999) == -1
    assert 0 <= generate.max_position(0, 1000) < 1000


# --------------------------------------------------------------------------- --from


@pytest.fixture
def source_csv(tmp_path):
    rng = np.random.default_rng(1)
    n = 400
    table = pa.table(
        {
            "Time": rng.integers(0, 1000, n),
            "Amount": np.round(rng.lognormal(3, 1.5, n), 2),
            "V1": rng.normal(size=n),
            "Class": rng.integers(0, 2, n),
            "Label": [f"k{i % 7}" for i in range(n)],
        }
    )
    path = tmp_path / "source.csv"
    pa_csv.write_csv(table, path)
    return path, pa_csv.read_csv(path)


def test_from_csv_replicates(tmp_path, source_csv):
    path, source = source_csv
    out = tmp_path / "rep"
    argv = ["--rows", 30000, "--from", path, "--files", 3, "--row-group-size", 5000]
    assert run(*argv, "--workers", 1, "--output", out) == 0
    table = read(out)
    assert table.num_rows == 30000 and table.schema == source.schema
    amount, src_amount = table["Amount"].to_numpy(), source["Amount"].to_numpy()
    assert np.array_equal(np.round(amount, 2), amount)  # decimals kept
    assert amount.min() >= src_amount.min() and amount.max() <= src_amount.max()
    v1, src_v1 = table["V1"].to_numpy(), np.sort(source["V1"].to_numpy())
    gap = np.abs(src_v1[np.clip(np.searchsorted(src_v1, v1), 0, len(src_v1) - 1)] - v1)
    gap = np.minimum(gap, np.abs(src_v1[np.clip(np.searchsorted(src_v1, v1) - 1, 0, None)] - v1))
    assert gap.max() < 0.06 * src_v1.std()  # 1 % noise: never near 6 noise-std away
    assert not np.array_equal(np.round(v1, 2), v1)  # many-decimal column is not rounded
    for name in ("Time", "Class", "Label"):
        assert set(table[name].to_pylist()) <= set(source[name].to_pylist())
    assert run(*argv, "--workers", 2, "--output", tmp_path / "rep2") == 0
    assert read(tmp_path / "rep2").equals(table)


def test_from_parquet_keeps_nulls_and_float32(tmp_path):
    path = tmp_path / "src.parquet"
    values = pa.array([1.5, None, 2.25, 3.0], type=pa.float32())
    pq.write_table(pa.table({"x": values, "n": pa.array([1, 2, None, 4])}), path)
    out = tmp_path / "rep"
    assert run("--rows", 1000, "--from", path, "--output", out) == 0
    table = read(out)
    assert table.schema.field("x").type == pa.float32() and table.num_rows == 1000
    assert 0 < table["x"].null_count < 1000 and 0 < table["n"].null_count < 1000
    x = table["x"].drop_null().to_numpy()
    assert np.array_equal(np.round(x, 2), x)


# --------------------------------------------------------------------------- errors


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_existing_output_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "gen"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    assert run(*SMALL, "--output", out) == 2
    assert "exists; pass --overwrite to replace it" in one_line_error(capsys)
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "old"
    assert run(*SMALL, "--files", 2, "--output", out, "--overwrite") == 0
    assert parts(out) == ["part-00000.parquet", "part-00001.parquet"]
    assert not (out / "keep.txt").exists() and leftovers(tmp_path, "gen") == []


def test_missing_from_file(tmp_path, capsys):
    out, missing = tmp_path / "gen", tmp_path / "nope.csv"
    assert run(*SMALL, "--from", missing, "--output", out) == 2
    assert str(missing) in one_line_error(capsys)
    assert os.listdir(tmp_path) == []


def test_unreadable_from_file(tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    assert run(*SMALL, "--from", bad, "--output", tmp_path / "gen") == 2
    assert str(bad) in one_line_error(capsys)
    assert os.listdir(tmp_path) == ["bad.parquet"]


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--rows", -1], "--rows"),
        (["--rows", 10, "--files", 0], "--files"),
        (["--rows", 10, "--row-group-size", 0], "--row-group-size"),
    ],
)
def test_bad_numbers(tmp_path, capsys, argv, flag):
    assert run(*argv, "--output", tmp_path / "gen") == 2
    assert flag in one_line_error(capsys)
    assert os.listdir(tmp_path) == []


def test_missing_parents_are_created(tmp_path):
    """The README's own line (--output data/scaled_data_1b/) failed where data/ did not exist;
    missing folders are created, as Dask's and Spark's writers do."""
    assert run(*SMALL, "--output", tmp_path / "no" / "such" / "gen") == 0
    assert pq.read_table(tmp_path / "no" / "such" / "gen").num_rows > 0


def test_a_parent_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert run(*SMALL, "--output", tmp_path / "file" / "gen") == 2
    assert str(tmp_path / "file") in one_line_error(capsys)


def test_unwritable_parent(tmp_path, capsys, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root ignores chmod
    assert run(*SMALL, "--output", parent / "gen") == 2
    assert str(parent) in one_line_error(capsys)
    assert os.listdir(parent) == []


def test_failure_midway_leaves_nothing(tmp_path, capsys, monkeypatch):
    real = generate.make_block
    calls = []

    def flaky(spec, block):
        calls.append(block)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real(spec, block)

    monkeypatch.setattr(generate, "make_block", flaky)
    out = tmp_path / "gen"
    argv = ["--rows", 200000, "--files", 2, "--workers", 1, "--output", out]
    assert run(*argv) == 2
    assert "No space left on device" in one_line_error(capsys)
    assert os.listdir(tmp_path) == []
    out.mkdir()
    (out / "keep.txt").write_text("old")
    calls.clear()
    assert run(*argv, "--overwrite") == 2
    assert os.listdir(out) == ["keep.txt"] and leftovers(tmp_path, "gen") == []


def test_atomic_directory_unit(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith("out.tmp-")
        (tmp / "f").write_text("x")
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with atomic_directory(target) as tmp:
        (tmp / "f").write_text("new")
    assert (target / "f").read_text() == "new"
    with pytest.raises(OutputError, match="exists"), atomic_directory(target):
        pass
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "g").write_text("newer")
    assert os.listdir(target) == ["g"] and os.listdir(tmp_path) == ["out"]


def test_a_temporary_directory_that_cannot_be_removed_is_named(tmp_path, monkeypatch, caplog):
    # As when a file in it cannot be deleted: removal is retried, then the user is told.
    monkeypatch.setattr(atomic.shutil, "rmtree", lambda path, ignore_errors=False: None)
    monkeypatch.setattr(atomic.time, "sleep", lambda seconds: None)
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "out") as tmp:
        raise RuntimeError("boom")
    assert tmp.exists()
    assert f"could not remove the temporary {tmp}; delete it by hand" in caplog.text
