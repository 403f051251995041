"""gpu_vgm.report and gpu_vgm.compare on bad input and awkward values: one stderr line naming
the file (and column), a non-zero exit, no traceback, no partial report; inf, nested columns."""

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpu_vgm import compare, report, run

pytestmark = pytest.mark.filterwarnings("ignore:.*did not converge")


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """A small input (two files) and its gpu_vgm output (column ``a``; ``b`` is kept as is)."""
    root = tmp_path_factory.mktemp("rc")
    (root / "in").mkdir()
    g = np.random.default_rng(0)
    for i in range(2):
        a = np.rint(g.lognormal(3, 1, 1500) * 100) / 100
        pq.write_table(pa.table({"a": a, "b": g.normal(size=1500)}), root / f"in/p{i}.parquet")
    argv = ["--input", str(root / "in"), "--output", str(root / "enc"), "--columns", "a"]
    argv += ["--backend", "cpu", "--workers", "1", "--sample-size", "2000", "--max-iter", "20"]
    argv += ["--partition-size", "1500"]  # a part per file
    assert run.main([*argv, "--quiet"]) == 0
    return root


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def rewrite(path, change):
    pq.write_table(change(pq.read_table(path)), path)


def corrupt_page(path):
    """Garbage over the second half of the first column chunk; the footer stays valid."""
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(0)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    end = chunk.data_page_offset + chunk.total_compressed_size
    data = bytearray(path.read_bytes())
    data[(start + end) // 2 : end] = b"\xff" * (end - (start + end) // 2)
    path.write_bytes(bytes(data))


def corrupt_footer(path):
    data = bytearray(path.read_bytes())
    data[-40:-8] = b"\xff" * 32  # the footer length and magic stay, the metadata is garbage
    path.write_bytes(bytes(data))


def report_main(inp, *extra):
    return report.main(["--input", str(inp), "--quiet", *map(str, extra)])


def report_files(out):
    return {p.name: p.read_bytes() for p in out.iterdir()}


# ----------------------------------------------------------------------------- report


def test_report_corrupt_data_page_names_the_file(encoded, tmp_path, capsys):
    enc = copy(encoded / "enc", tmp_path / "enc")
    corrupt_page(enc / "part-00001.parquet")
    assert report_main(enc) == 2
    one_line_error(capsys, str(enc / "part-00001.parquet"), "not a readable Parquet file")
    assert not (enc / "_report").exists()


def test_report_output_that_is_a_file_or_someone_elses_folder(encoded, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("keep")
    assert report_main(encoded / "enc", "--output", taken) == 2
    one_line_error(capsys, str(taken), "not a gpu_vgm report")
    assert taken.read_text() == "keep"
    # a folder with other things in it (here the input data) is not replaced either
    inp = copy(encoded / "in", tmp_path / "in")
    assert report_main(encoded / "enc", "--output", inp) == 2
    one_line_error(capsys, str(inp), "not a gpu_vgm report")
    assert sorted(p.name for p in inp.iterdir()) == ["p0.parquet", "p1.parquet"]


@pytest.mark.skipif(not Path("/sys/fs").is_dir(), reason="needs Linux sysfs (read-only to mkdir)")
def test_report_output_on_an_unwritable_filesystem(encoded, capsys):
    out = Path("/sys/fs/gpu_vgm_report")
    assert report_main(encoded / "enc", "--output", out) == 2
    one_line_error(capsys, str(out))
    assert not out.exists()


@pytest.mark.parametrize("bad_id", [999, -5])
def test_report_component_id_out_of_range_names_file_and_column(encoded, tmp_path, capsys, bad_id):
    enc = copy(encoded / "enc", tmp_path / "enc")

    def change(t):
        comp = t.column("a_component").to_numpy().copy()
        comp[7] = bad_id
        return t.set_column(t.schema.get_field_index("a_component"), "a_component", pa.array(comp))

    rewrite(enc / "part-00000.parquet", change)
    assert report_main(enc) == 2
    one_line_error(capsys, str(enc / "part-00000.parquet"), "'a_component'", str(bad_id))
    assert not (enc / "_report").exists()


def test_report_part_without_component_column(encoded, tmp_path, capsys):
    enc = copy(encoded / "enc", tmp_path / "enc")
    rewrite(enc / "part-00001.parquet", lambda t: t.drop_columns(["a_component"]))
    assert report_main(enc) == 2
    one_line_error(capsys, str(enc / "part-00001.parquet"), "'a_component' not found")
    assert not (enc / "_report").exists()


def test_report_replaces_an_earlier_report_whole(encoded, tmp_path, capsys):
    enc = copy(encoded / "enc", tmp_path / "enc")
    out = enc / "_report"  # the default place
    assert report_main(enc) == 0
    assert sorted(report_files(out)) == ["a_fit.png", "report.json"]
    (out / "gone_fit.png").write_bytes(b"a column an earlier report had")
    assert report_main(enc) == 0
    assert sorted(report_files(out)) == ["a_fit.png", "report.json"]  # replaced, not merged
    assert sorted(p.name for p in enc.iterdir() if p.name.startswith("_report")) == ["_report"]
    assert capsys.readouterr().err == ""


def test_report_failing_while_writing_keeps_the_earlier_report(
    encoded, tmp_path, capsys, monkeypatch
):
    enc = copy(encoded / "enc", tmp_path / "enc")
    assert report_main(enc) == 0
    before = report_files(enc / "_report")

    def disk_full(column, model, values, usage, path):
        path.write_bytes(b"half a png")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "plot_column", disk_full)
    assert report_main(enc) == 2
    one_line_error(capsys, str(enc / "_report"), "No space left on device")
    assert report_files(enc / "_report") == before
    assert sorted(p.name for p in enc.iterdir() if p.name.startswith("_report")) == ["_report"]


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_report_inf_and_huge_values_without_warnings(tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    x = [1.0, np.inf, -np.inf, np.nan, 2.0]
    table = pa.table({"x": x, "huge": [1e300, -1e300, 1e300, 1.0, np.inf], "inf": [np.inf] * 5})
    pq.write_table(table, inp / "p.parquet")
    assert report.main(["--input", str(inp)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "x: missing 1; mean 1.5," in out  # of the finite values, not counting the infinities
    assert "inf: missing 0; mean nan, std nan, min nan" in out


# ----------------------------------------------------------------------------- compare


@pytest.mark.parametrize("damage", [corrupt_page, corrupt_footer])
@pytest.mark.parametrize("side", [0, 1])
def test_compare_corrupt_file_in_either_dataset_names_it(encoded, tmp_path, capsys, damage, side):
    bad = copy(encoded / "in", tmp_path / "bad")
    damage(bad / "p1.parquet")
    pair = [encoded / "in", bad] if side else [bad, encoded / "in"]
    assert compare.main([*map(str, pair), "--quiet"]) == 2
    one_line_error(capsys, str(bad / "p1.parquet"), "not a readable Parquet file")


def test_compare_file_with_other_columns_names_it(encoded, tmp_path, capsys):
    other = copy(encoded / "in", tmp_path / "other")
    rewrite(other / "p1.parquet", lambda t: t.drop_columns(["b"]))
    assert compare.main([str(encoded / "in"), str(other), "--quiet"]) == 2
    one_line_error(capsys, "columns differ", str(other / "p1.parquet"))


def write(directory, table):
    directory.mkdir()
    pq.write_table(table, directory / "p.parquet")
    return str(directory)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_compare_equal_infinities_nan_and_null_without_warnings(encoded, tmp_path, capsys):
    x = pa.array([1.0, np.inf, -np.inf, np.nan, None, 1e308, -1e308])
    d = write(tmp_path / "d", pa.table({"a": x}))
    assert compare.main([d, d]) == 0
    assert "7 rows, all columns equal exactly" in capsys.readouterr().out
    nulls = write(
        tmp_path / "nulls", pa.table({"a": pa.array([1.0, np.inf, -np.inf] + [None] * 4)})
    )
    assert compare.main([d, nulls]) == 1  # null equals null only: not NaN, not a number
    assert "mismatches: {'a': 3}" in capsys.readouterr().out
    flipped = write(
        tmp_path / "f", pa.table({"a": [1.0, -np.inf, -np.inf, 5.0, 6.0, -1e308, 1e308]})
    )
    assert compare.main([d, flipped]) == 1
    assert "mismatches: {'a': 5}" in capsys.readouterr().out
    # the decoding contract's tolerance never covers NaN or inf against a number
    model = str(encoded / "enc" / "_model.json")
    assert compare.main([d, d, "--model", model]) == 0
    assert compare.main([d, flipped, "--model", model]) == 1
    assert "mismatches: {'a': 5}" in capsys.readouterr().out
    assert capsys.readouterr().err == ""


def test_compare_compares_bits_with_nan_payloads_equal(tmp_path, capsys):
    """-0.0 is not 0.0 (the bits differ); NaN equals NaN whatever its payload."""
    quiet_nan = np.array([np.nan])
    other_nan = np.array([0x7FF8000000000123], np.int64).view(np.float64)
    a = write(tmp_path / "a", pa.table({"x": np.array([0.0, -0.0, quiet_nan[0], 2.5])}))
    b = write(tmp_path / "b", pa.table({"x": np.array([-0.0, 0.0, other_nan[0], 2.5])}))
    assert compare.main([a, b]) == 1
    assert "mismatches: {'x': 2}" in capsys.readouterr().out
    assert compare.main([a, a]) == 0


def test_compare_nested_and_other_types_by_exact_equality(tmp_path, capsys):
    columns = {
        "l": pa.array([[1, 2], None, [], [3]], pa.list_(pa.int32())),
        "s": pa.array([{"a": 1}, {"a": None}, None, {"a": 4}], pa.struct([("a", pa.int64())])),
        "m": pa.array([[("k", 1)], None, [], [("j", 2)]], pa.map_(pa.string(), pa.int64())),
        "ld": pa.array([[np.nan, 1.0], [np.inf], None, []], pa.list_(pa.float64())),
        "n": pa.array([None] * 4, pa.null()),
        "t": pa.array(["x", None, "y", "z"]),
    }
    d = write(tmp_path / "d", pa.table(columns))
    assert compare.main([d, d, "--quiet"]) == 0
    assert "4 rows, all columns equal exactly" in capsys.readouterr().out
    columns["l"] = pa.array([[1, 2], None, [], [4]], pa.list_(pa.int32()))
    columns["s"] = pa.array([{"a": 1}, {"a": 2}, None, {"a": 4}], pa.struct([("a", pa.int64())]))
    columns["ld"] = pa.array([[np.nan, 1.0], [-np.inf], None, None], pa.list_(pa.float64()))
    e = write(tmp_path / "e", pa.table(columns))
    assert compare.main([d, e, "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "mismatches: {'l': 1, 's': 1, 'ld': 2}" in out
    assert json.dumps(compare.compare(d, e)["mismatches"]) == json.dumps(
        {"l": 1, "s": 1, "m": 0, "ld": 2, "n": 0, "t": 0}
    )


def test_report_plots_columns_whose_names_are_no_file_names(tmp_path, capsys):
    """A column named "a/b", or 5000 characters long, made the report fail naming the output
    folder; its plot now gets a cleaned name with a hash, listed in report.json."""
    g = np.random.default_rng(9)
    long = "x" * 5000
    x = {"a/b": np.rint(g.lognormal(3, 1, 3000) * 100) / 100, long: g.normal(size=3000)}
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table(x), tmp_path / "in" / "p.parquet")
    argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "enc"), "--quiet"]
    assert run.main([*argv, "--backend", "cpu", "--workers", "1", "--sample-size", "2000"]) == 0
    assert report_main(tmp_path / "enc", "--output", tmp_path / "rep") == 0
    plots = json.loads((tmp_path / "rep" / "report.json").read_text())["plots"]
    assert set(plots) == {"a/b", long}
    for name in plots.values():
        assert (tmp_path / "rep" / name).is_file() and len(name) < 120 and "/" not in name
    capsys.readouterr()
