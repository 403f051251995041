"""The encode/decode jobs end to end, through the command-line entry points, on real clusters."""

import itertools
import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpu_vgm import fitting, generate, inverse, progress, run
from gpu_vgm.compare import compare
from gpu_vgm.encode_job import encode_job
from gpu_vgm.plan import EncodeOptions, plan_encode

pytestmark = pytest.mark.filterwarnings("ignore:.*did not converge")


@pytest.fixture(scope="module")
def input_20m(tmp_path_factory):
    out = tmp_path_factory.mktemp("in20m") / "input"
    assert generate.main(["--rows", "20000000", "--output", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def small_input(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "input"
    assert (
        generate.main(
            [
                "--rows",
                "300000",
                "--files",
                "3",
                "--row-group-size",
                "40000",
                "--output",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    return out


def encode(inp, out, *extra):
    return run.main(
        ["--input", str(inp), "--output", str(out), "--backend", "cpu", "--quiet", *extra]
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["argmax", "sample"])
def test_20m_rows_encode_then_inverse_returns_every_row(input_20m, tmp_path, mode):
    enc, back = tmp_path / "enc", tmp_path / "back"
    assert encode(input_20m, enc, "--mode", mode, "--workers", "2") == 0
    manifest = json.loads((enc / "_manifest.json").read_text())
    assert manifest["rows"] == 20_000_000 and manifest["mode"] == mode
    assert manifest["columns"]["Amount"]["out_of_coverage"] == 0
    z = pq.read_table(enc, columns=["Amount_normalized"]).column(0).to_numpy()
    assert np.abs(z).max() <= 0.99  # the column maximum is inside the fitted coverage
    assert inverse.main(["--input", str(enc), "--output", str(back), "--quiet"]) == 0
    result = compare(input_20m, back, enc / "_model.json")
    assert result["rows"] == 20_000_000
    assert result["mismatches"] == {"Amount": 0}


@pytest.mark.slow
def test_20m_output_does_not_depend_on_workers_or_partition_size(input_20m, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert encode(input_20m, a, "--mode", "sample", "--workers", "1", "--partition-size", "3M") == 0
    assert (
        encode(input_20m, b, "--mode", "sample", "--workers", "2", "--partition-size", "64MiB") == 0
    )
    assert len(list(a.glob("part-*"))) != len(list(b.glob("part-*")))
    result = compare(a, b)
    assert result["rows"] == 20_000_000
    assert not any(result["mismatches"].values())


def test_learned_rounding_roundtrip_is_bit_exact(small_input, tmp_path):
    enc, back = tmp_path / "enc", tmp_path / "back"
    assert (
        encode(
            small_input,
            enc,
            "--learn-rounding",
            "--dtype",
            "float32",
            "--special-values",
            "0",
            "--partition-size",
            "50K",
        )
        == 0
    )
    assert pq.read_schema(next(enc.glob("part-*"))).field("Amount_normalized").type == "float"
    assert inverse.main(["--input", str(enc), "--output", str(back), "--quiet"]) == 0
    result = compare(small_input, back)
    assert result["mismatches"] == {"Amount": 0} and result["rows"] == 300_000


def test_output_layout_and_manifest(small_input, tmp_path):
    enc = tmp_path / "enc"
    assert (
        encode(
            small_input, enc, "--partition-size", "100K", "--model-out", str(tmp_path / "m.json")
        )
        == 0
    )
    parts = sorted(p.name for p in enc.glob("part-*.parquet"))
    assert parts == [f"part-{i:05d}.parquet" for i in range(len(parts))]
    table = pq.read_table(enc)
    assert table.column_names == ["Amount", "Amount_normalized", "Amount_component"]
    assert table.schema.field("Amount_component").type == pa.int16()
    original = pq.read_table(small_input).column("Amount")
    assert table.column("Amount").equals(original)  # input columns kept, rows in input order
    manifest = json.loads((enc / "_manifest.json").read_text())
    assert sum(p["rows"] for p in manifest["parts"]) == 300_000
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads(
        (enc / "_model.json").read_text()
    )
    # fit once, encode many: the saved model gives the same output
    again = tmp_path / "again"
    assert encode(small_input, again, "--model-in", str(tmp_path / "m.json")) == 0
    assert not any(compare(enc, again)["mismatches"].values())


def _task_prefixes(dask_scheduler):
    return set(dask_scheduler.task_prefixes)


def test_fits_in_the_client_or_in_dask_tasks_give_one_model_and_output(small_input, tmp_path):
    """run fits in its own threads when the cluster is its own, in Dask tasks on a joined one.
    The model must not depend on where it was fitted, nor on the caller's BLAS threads (a
    30k-row sample fitted differently on 1 and 2 threads). A fit in the client leaves the proof
    of its coverage to a worker (hold_checked)."""
    from threadpoolctl import threadpool_limits

    from gpu_vgm.cluster import dask_client

    def opts(name):
        return EncodeOptions(
            input=str(small_input), output=str(tmp_path / name), sample_size=30_000
        )

    with dask_client("cpu", workers=2) as client:
        with threadpool_limits(limits=2):
            # a function that returns the client, as run passes while its cluster starts
            encode_job(lambda: client, opts("here"), fit_threads=2)
        ran = client.run_on_scheduler(_task_prefixes)
        assert "hold_checked" in ran and "fit_column" not in ran
        encode_job(client, opts("tasks"))
        assert "fit_column" in client.run_on_scheduler(_task_prefixes)
    here, tasks = tmp_path / "here", tmp_path / "tasks"
    assert (here / "_model.json").read_bytes() == (tasks / "_model.json").read_bytes()
    result = compare(here, tasks)
    assert result["rows"] == 300_000 and not any(result["mismatches"].values())


def test_fits_in_threads_prove_their_coverage_only_when_asked(small_input, monkeypatch):
    """Fits in the client's threads prove their coverage themselves for a GPU cluster (its
    workers do not load the CPU kernel) and leave it to a worker for a CPU one."""
    from gpu_vgm.model import ScaleVGM

    proven = []
    check = ScaleVGM.check_coverage
    monkeypatch.setattr(
        ScaleVGM, "check_coverage", lambda self: proven.append(self.column) or check(self)
    )
    opts = EncodeOptions(input=str(small_input), output="unused", sample_size=5_000)
    plan = plan_encode(opts)
    for asked, expected in ((True, ["Amount"]), (False, [])):
        proven.clear()
        models = fitting.fit_models(None, plan, threads=2, check_coverage=asked)
        assert list(models) == ["Amount"] and proven == expected


def test_progress_is_logged_where_stderr_is_not_a_terminal(
    small_input, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(progress, "PROGRESS_INTERVAL", 0.0)  # a line for every part but the last
    argv = ["--input", str(small_input), "--output", str(tmp_path / "enc"), "--backend", "cpu"]
    assert run.main([*argv, "--partition-size", "100K"]) == 0
    assert inverse.main(["--input", str(tmp_path / "enc"), "--output", str(tmp_path / "d")]) == 0
    err = capsys.readouterr().err  # pytest's stderr is not a terminal
    parts = len(list((tmp_path / "enc").glob("part-*.parquet")))
    lines = [re.sub(r"\(\d+%\) in \d+ s$", "", m) for m in err.splitlines() if " parts (" in m]
    assert parts > 2 and lines == [
        f"gpu_vgm: {what}: {i} of {parts} parts "
        for what in ("encoding", "decoding")
        for i in range(1, parts)
    ]
    assert run.main([*argv, "--overwrite", "--quiet"]) == 0
    assert " parts (" not in capsys.readouterr().err


def test_zero_row_files_all_nan_and_typed_columns(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    g = np.random.default_rng(0)
    pq.write_table(
        pa.table(
            {
                "a": pa.array([], pa.float64()),
                "n": pa.array([], pa.int64()),
                "f": pa.array([], pa.float32()),
            }
        ),
        inp / "0.parquet",
    )
    n = 5000
    ints = pa.array(g.integers(-50, 50, n), mask=g.random(n) < 0.1)
    pq.write_table(
        pa.table({"a": np.full(n, np.nan), "n": ints, "f": g.normal(0, 3, n).astype(np.float32)}),
        inp / "1.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "a": g.normal(5, 1, n),
                "n": pa.array(g.integers(0, 9, n)),
                "f": g.normal(0, 3, n).astype(np.float32),
            }
        ),
        inp / "2.parquet",
        row_group_size=1000,
    )
    enc, back = tmp_path / "enc", tmp_path / "back"
    assert encode(inp, enc, "--columns", "a,n,f", "--partition-size", "2000") == 0
    assert inverse.main(["--input", str(enc), "--output", str(back), "--quiet"]) == 0
    restored = pq.read_table(back)
    original = pq.read_table(inp)
    assert restored.schema.field("n").type == pa.int64()
    assert restored.schema.field("f").type == pa.float32()
    assert restored.column("n").equals(original.column("n"))
    assert restored.column("f").equals(original.column("f"))
    assert compare(inp, back, enc / "_model.json")["mismatches"] == {"a": 0, "n": 0, "f": 0}


# ----------------------------------------------------------------------------- bad input
def _write(path, table, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **kw)
    return path.parent


def bad_inputs(tmp):
    good = pa.table({"Amount": np.arange(100.0), "name": ["x"] * 100})
    cases = {
        "missing path": (tmp / "nope", [], "no such file"),
        "no parquet": (tmp / "empty_dir", [], "no Parquet files"),
        "missing column": (
            _write(tmp / "mc" / "a.parquet", good),
            ["--columns", "Nope"],
            "'Nope' not found",
        ),
        "non-numeric": (
            _write(tmp / "nn" / "a.parquet", good),
            ["--columns", "name"],
            "'name' is string",
        ),
        "inf in stats": (
            _write(tmp / "inf" / "a.parquet", pa.table({"Amount": [1.0, np.inf]})),
            [],
            "infinite",
        ),
        "inf without stats": (
            _write(
                tmp / "inf2" / "a.parquet",
                pa.table({"Amount": [1.0, 2.0, -np.inf] * 10}),
                write_statistics=False,
            ),
            [],
            "infinite",
        ),
    }
    (tmp / "empty_dir").mkdir()
    corrupt = tmp / "corrupt"
    _write(corrupt / "a.parquet", good)
    (corrupt / "b.parquet").write_bytes(b"PAR1 this is not parquet at all PAR1")
    cases["corrupt file"] = (corrupt, [], "b.parquet: not a readable Parquet file")
    truncated = tmp / "truncated"
    _write(truncated / "a.parquet", good)
    data = (truncated / "a.parquet").read_bytes()
    (truncated / "b.parquet").write_bytes(data[: len(data) // 2])
    cases["truncated file"] = (truncated, [], "b.parquet")
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "missing path",
        "no parquet",
        "missing column",
        "non-numeric",
        "inf in stats",
        "inf without stats",
        "corrupt file",
        "truncated file",
    ],
)
def test_bad_input_one_line_error_nonzero_exit_no_output(tmp_path, capsys, case):
    inp, extra, message = bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    rc = encode(inp, out, "--workers", "1", *extra)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert message in err
    assert len(err.splitlines()) == 1, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("out.")]  # no temp left


def test_existing_output_is_left_untouched(small_input, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert encode(small_input, out) != 0
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_unwritable_output_and_gpu_without_gpu(small_input, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert encode(small_input, blocker / "out") != 0
    assert "file" in capsys.readouterr().err
    if os.environ.get("CUDA_VISIBLE_DEVICES") is None:
        rc = run.main(
            [
                "--input",
                str(small_input),
                "--output",
                str(tmp_path / "g"),
                "--backend",
                "gpu",
                "--quiet",
            ]
        )
        from gpu_vgm.backends import gpu_unavailable_reason

        if gpu_unavailable_reason() is not None:
            assert rc == 3
            assert "no usable GPU" in capsys.readouterr().err
            assert not (tmp_path / "g").exists()


def _write_layout(table, root, files, row_group):
    root.mkdir(parents=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(np.int64)
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        pq.write_table(table.slice(a, b - a), root / f"f-{i:04d}.parquet", row_group_size=row_group)


@pytest.mark.parametrize("mode", ["argmax", "sample"])
def test_any_input_layout_gives_the_same_values_in_sized_parts(tmp_path, mode):
    """The same rows as 6 files of 5k-row groups, one file of one row group (read in slices),
    and 300 small files (grouped): identical output values, parts of about --partition-size,
    a manifest that maps every part to its input rows, and an exact inverse."""
    g = np.random.default_rng(12)
    rows = 60_000
    cents = np.rint(g.lognormal(3, 1.2, (3, rows)) * 100) / 100
    cents[0, ::101] = np.nan
    table = pa.table(
        {
            "a": pa.array(cents[0]),
            "b": pa.array(cents[1], mask=g.random(rows) < 0.01),
            "c": cents[2],
            "id": np.arange(rows),
        }
    )
    layouts = {"files-6": (6, 5_000), "one-group": (1, rows), "files-300": (300, 200)}
    for name, (files, group) in layouts.items():
        _write_layout(table, tmp_path / name, files, group)
    model = tmp_path / "model.json"
    fit = ["--input", str(tmp_path / "files-6"), "--output", str(tmp_path / "fit")]
    assert (
        run.main([*fit, "--learn-rounding", "--model-out", str(model), "-q", "--workers", "2"]) == 0
    )
    for name in layouts:
        argv = ["--input", str(tmp_path / name), "--output", str(tmp_path / f"out-{name}")]
        argv += ["--model-in", str(model), "--mode", mode, "--partition-size", "10K", "-q"]
        assert run.main([*argv, "--workers", "2"]) == 0
        manifest = json.loads((tmp_path / f"out-{name}" / "_manifest.json").read_text())
        assert len(manifest["parts"]) == 6  # 60k rows in parts of 10k, whatever the layout
        offset = 0
        for part in manifest["parts"]:
            assert part["row_offset"] == offset
            assert sum(s[3] for s in part["segments"]) == part["rows"]
            offset += part["rows"]
        assert offset == rows
        if name != "files-6":
            same = compare(tmp_path / "out-files-6", tmp_path / f"out-{name}")
            assert same["rows"] == rows and not any(same["mismatches"].values()), same
        back = tmp_path / f"back-{name}"
        assert inverse.main(["--input", str(tmp_path / f"out-{name}"), "--output", str(back)]) == 0
        restored = compare(tmp_path / name, back)
        assert restored["rows"] == rows and not any(restored["mismatches"].values()), restored
    one_group = json.loads((tmp_path / "out-one-group" / "_manifest.json").read_text())
    assert [p["segments"][0][2] for p in one_group["parts"]] == list(range(0, rows, 10_000))


def test_partitions_by_bytes_slice_and_group_too(tmp_path):
    g = np.random.default_rng(13)
    table = pa.table({"a": g.lognormal(3, 1, 40_000)})  # 320 kB plain: no dictionary helps
    _write_layout(table, tmp_path / "in", 1, 40_000)
    argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "-q"]
    assert run.main([*argv, "--partition-size", "100KiB", "--workers", "1"]) == 0
    parts = json.loads((tmp_path / "out" / "_manifest.json").read_text())["parts"]
    assert len(parts) == 4  # about 400 kB of pages in slices of at most 100 KiB
    assert inverse.main(["--input", str(tmp_path / "out"), "--output", str(tmp_path / "b")]) == 0
    assert not any(
        compare(tmp_path / "in", tmp_path / "b", tmp_path / "out/_model.json")[
            "mismatches"
        ].values()
    )


def test_fits_spread_over_this_process_and_the_cluster_give_the_same_models(tmp_path):
    """Columns are taken from one queue by run's own fit threads and by the cluster's worker
    threads (a joined cluster): the models equal those fitted in threads alone."""
    from gpu_vgm import modelfile
    from gpu_vgm.cluster import dask_client

    g = np.random.default_rng(14)
    table = pa.table({f"c{j}": np.rint(g.lognormal(3, 1, 20_000) * 100) / 100 for j in range(8)})
    pq.write_table(table, tmp_path / "wide.parquet")

    def opts(name):
        return EncodeOptions(
            input=str(tmp_path / "wide.parquet"), output=str(tmp_path / name), sample_size=5_000
        )

    with dask_client("cpu", workers=2) as client:
        encode_job(client, opts("spread"), fit_threads=1, fit_on_cluster=True)
        assert "fit_column" in client.run_on_scheduler(_task_prefixes)
        encode_job(client, opts("threads"), fit_threads=2)
    spread = modelfile.load_models(tmp_path / "spread" / "_model.json")
    here = modelfile.load_models(tmp_path / "threads" / "_model.json")
    for c in table.column_names:
        assert spread[c].to_dict() == here[c].to_dict()
