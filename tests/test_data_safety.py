"""User data is never lost or silently changed: inputs that an output would overwrite, values
float64 cannot hold, crafted model files and manifests, failed runs that must leave nothing."""

import json
import re
import subprocess
import sys
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpu_vgm import generate, inverse, run
from gpu_vgm.backends import ArrowCPU
from gpu_vgm.cluster import dask_client
from gpu_vgm.encode_job import encode_job
from gpu_vgm.errors import InputError, ModelFileError
from gpu_vgm.model import ScaleVGM
from gpu_vgm.modelfile import load_models
from gpu_vgm.plan import EncodeOptions

pytestmark = pytest.mark.filterwarnings("ignore:.*did not converge")
CLUSTER = ["--backend", "cpu", "--workers", "1"]
FAST = [*CLUSTER, "--sample-size", "2000", "--max-iter", "20"]


def encode(inp, out, *extra):
    fit = CLUSTER if "--model-in" in extra else FAST  # fit options and --model-in: refused
    return run.main(["--input", str(inp), "--output", str(out), "--quiet", *fit, *extra])


def decode(inp, out, *extra):
    return inverse.main(["--input", str(inp), "--output", str(out), "--workers", "1", *extra])


def one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def write(path, table, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **kw)
    return path.parent


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """A small input and its encoded output (seed 42), plus the model of a seed-7 run."""
    root = tmp_path_factory.mktemp("safety")
    x = np.random.default_rng(0).lognormal(3, 1, 3000).round(2)
    write(root / "in" / "a.parquet", pa.table({"Amount": x, "note": ["n"] * x.size}))
    assert encode(root / "in", root / "enc") == 0
    assert encode(root / "in", root / "enc7", "--seed", "7") == 0
    return root


# ------------------------------------------------------------------ outputs that hold inputs
def test_output_that_holds_the_input_is_refused_and_the_input_kept(
    encoded, tmp_path, capsys, monkeypatch
):
    data = write(tmp_path / "box" / "data" / "a.parquet", pq.read_table(encoded / "in"))
    (tmp_path / "box" / "notes.txt").write_text("keep")
    cases = [
        # --overwrite of the folder above the input would delete the input
        (lambda: encode(data, tmp_path / "box", "--overwrite"), "overlaps"),
        (lambda: encode(f"{data}/*.parquet", data, "--overwrite"), "overlaps"),
        (lambda: encode(data / "a.parquet", data, "--overwrite"), "overlaps"),
        (lambda: encode(data, data / "out"), "overlaps"),  # the next run would read it
        (lambda: decode(tmp_path / "box", tmp_path / "box", "--overwrite"), "overlaps"),
        (
            lambda: generate.main(
                [
                    *("--rows", "10", "--from", str(data / "a.parquet")),
                    *("--output", str(tmp_path / "box"), "--overwrite"),
                ]
            ),
            "overlaps",
        ),
    ]

    def refused(call, message):
        assert call() != 0
        assert message in one_line(capsys)
        assert pq.read_table(data / "a.parquet").num_rows == 3000
        assert (tmp_path / "box" / "notes.txt").read_text() == "keep"
        assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["data", "notes.txt"]

    for call, message in cases:
        refused(call, message)
    monkeypatch.chdir(tmp_path / "box")  # --output . --overwrite would replace it
    refused(lambda: encode(encoded / "in", ".", "--overwrite"), "current directory")


def test_inverse_onto_its_own_input_is_refused(encoded, tmp_path, capsys):
    import shutil

    enc = tmp_path / "enc"
    shutil.copytree(encoded / "enc", enc)
    assert decode(enc, enc, "--overwrite") != 0
    assert "overlaps" in one_line(capsys)
    assert (enc / "_model.json").exists() and (enc / "part-00000.parquet").exists()


def test_model_out_is_checked_first_and_written_only_after_success(encoded, tmp_path, capsys):
    mine = tmp_path / "mine.json"
    mine.write_text("my notes")
    assert encode(encoded / "in", tmp_path / "o1", "--model-out", str(mine)) != 0
    assert "--overwrite" in one_line(capsys)
    assert mine.read_text() == "my notes" and not (tmp_path / "o1").exists()
    assert encode(encoded / "in", tmp_path / "o2", "--model-out", str(tmp_path / "o2")) != 0
    assert "overlaps" in one_line(capsys)
    assert not (tmp_path / "o2").exists()
    assert encode(encoded / "in", tmp_path / "o2", "--model-out", str(tmp_path)) != 0
    assert "is a directory" in one_line(capsys)

    class Failing(ArrowCPU):  # a fault injected into encoding, after the fit
        def column(self, frame, name, source):
            raise InputError("injected fault")

    out, model_out = tmp_path / "o3", tmp_path / "m3.json"
    opts = EncodeOptions(
        input=str(encoded / "in"), output=str(out), sample_size=2000, model_out=str(model_out)
    )
    with dask_client("cpu", workers=1) as client, pytest.raises(InputError, match="injected"):
        encode_job(client, opts, backend=Failing())
    assert not model_out.exists() and not out.exists()


# ------------------------------------------------------------- values float64 cannot hold
@pytest.mark.parametrize(
    ("table", "columns", "message"),
    [
        (pa.table({"i": pa.array([1, 2**60 + 1] * 50, pa.int64())}), "i", "not in range"),
        (
            pa.table({"d": pa.array([Decimal("12345678901234567.891")] * 9, pa.decimal128(20, 3))}),
            "d",
            "more than 15 digits",
        ),
        (pa.table({"v": [1.0, 2.0, 1e200] * 20}), "v", "1e+200"),
        (
            pa.table([pa.array([1.0, 2.0]), pa.array([3.0, 4.0])], names=["A", "A"]),
            "A",
            "more than once",
        ),
    ],
    ids=["int64 beyond 2^53", "decimal of 20 digits", "1e200", "duplicate names"],
)
def test_values_that_would_not_come_back_are_refused(tmp_path, capsys, table, columns, message):
    inp = write(tmp_path / "in" / "a.parquet", table)
    assert encode(inp, tmp_path / "out", "--columns", columns) != 0
    assert message in one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_integers_that_float32_output_cannot_carry_are_refused(tmp_path, capsys):
    """Every integer row is checked at encode: float32 z holds 24 bits, these need 41."""
    ints = np.random.default_rng(3).integers(-(2**40), 2**40, 5000)
    inp = write(tmp_path / "in" / "a.parquet", pa.table({"i": ints}))
    assert encode(inp, tmp_path / "out", "--columns", "i", "--dtype", "float32") != 0
    assert "would not decode exactly from float32" in one_line(capsys)
    assert not (tmp_path / "out").exists()
    assert encode(inp, tmp_path / "out", "--columns", "i") == 0  # float64 carries them


def test_integers_decimals_float16_and_field_metadata_come_back(tmp_path):
    g = np.random.default_rng(1)
    n = 4000
    fields = [
        pa.field("i", pa.int64(), nullable=False, metadata={"unit": "cents"}),
        pa.field("d", pa.decimal128(12, 2)),
        pa.field("h", pa.float16()),
        pa.field("k", pa.dictionary(pa.int8(), pa.float64())),
    ]
    table = pa.table(
        {
            "i": pa.array(g.integers(-(2**40), 2**40, n)),
            "d": pa.array(
                [Decimal(f"{v:.2f}") for v in g.lognormal(5, 2, n)], pa.decimal128(12, 2)
            ),
            "h": pa.array(g.normal(0, 10, n).astype(np.float16)),
            "k": pa.array(g.choice([0.5, 1.25, 7.0], n)).dictionary_encode().cast(fields[3].type),
        },
        schema=pa.schema(fields, metadata={"owner": "me"}),
    )
    inp = write(tmp_path / "in" / "a.parquet", table)
    enc, back = tmp_path / "enc", tmp_path / "back"
    assert encode(inp, enc, "--columns", "i,d,h,k", "--special-values", "0.5") == 0
    assert decode(enc, back) == 0
    restored, original = pq.read_table(back), pq.read_table(inp)  # k reads back as double
    assert restored.schema.equals(original.schema, check_metadata=True), restored.schema
    assert restored.schema.field("i").metadata == {b"unit": b"cents"}
    assert restored.equals(original)


def test_input_without_rows_gives_an_output_with_its_schema(tmp_path):
    table = pa.table({"Amount": pa.array([], pa.float64()), "s": pa.array([], pa.string())})
    inp = write(tmp_path / "in" / "a.parquet", table)
    enc, back = tmp_path / "enc", tmp_path / "back"
    assert encode(inp, enc) == 0
    assert pq.read_schema(enc / "part-00000.parquet").names == [
        "Amount",
        "s",
        "Amount_normalized",
        "Amount_component",
    ]
    assert decode(enc, back) == 0
    assert pq.read_table(back).schema.equals(table.schema)


# ------------------------------------------------------------ crafted models and manifests
def _fitted_dict():
    x = np.random.default_rng(2).normal(100, 5, 2000)
    return ScaleVGM(column="Amount", max_iter=20).fit(x).to_dict()


def _mutations():
    def tiny_std(d):
        d["fitted"]["components"]["std"][0] = 1e-320

    def huge_mean(d):
        d["fitted"]["components"]["mean"][0] = 1e308

    def negative_weight(d):
        d["fitted"]["components"]["weight"][0] = -0.5

    def unknown_key(d):
        d["fitted"]["components"]["shell"] = "rm -rf /"

    def sklearn_dropped(d):  # would skip the check of the constants against scikit-learn
        d["fitted"]["sklearn"] = None

    # JSON's true and false pass Python's isinstance(v, int) and equal 1 and 0
    def boolean_sample_size(d):
        d["fitted"]["sample_size"] = True

    def boolean_max_iter(d):
        d["params"]["max_iter"] = True

    def boolean_max_rounding_digits(d):
        d["params"]["max_rounding_digits"] = False

    def boolean_rounding_digits(d):
        d["fitted"]["rounding_digits"] = True

    def boolean_n_iter(d):
        d["fitted"]["sklearn"]["n_iter_"] = True

    return [
        tiny_std,
        huge_mean,
        negative_weight,
        unknown_key,
        sklearn_dropped,
        boolean_sample_size,
        boolean_max_iter,
        boolean_max_rounding_digits,
        boolean_rounding_digits,
        boolean_n_iter,
    ]


@pytest.mark.parametrize("mutate", _mutations(), ids=lambda f: f.__name__)
def test_crafted_model_values_are_refused(tmp_path, mutate):
    data = _fitted_dict()
    ScaleVGM.from_dict(json.loads(json.dumps(data)))  # the untouched model loads
    mutate(data)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="invalid model file"):
        load_models(path)


def test_a_boolean_mixture_size_is_refused(tmp_path):
    x = np.random.default_rng(2).normal(100, 5, 2000)
    data = ScaleVGM(column="Amount", n_components=1, max_iter=20).fit(x).to_dict()
    assert data["fitted"]["n_mixture"] == data["fitted"]["sklearn"]["n_components"] == 1
    data["fitted"]["n_mixture"] = data["fitted"]["sklearn"]["n_components"] = True  # == 1
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="n_mixture out of range"):
        load_models(path)


def test_deeply_nested_model_json_is_one_line(encoded, tmp_path, capsys):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert encode(encoded / "in", tmp_path / "out", "--model-in", str(path)) != 0
    assert "nested too deeply" in one_line(capsys)


def test_inverse_refuses_another_model_and_damaged_outputs(encoded, tmp_path, capsys):
    import shutil

    assert decode(encoded / "enc", tmp_path / "b1", "--model", str(encoded / "enc7/_model.json"))
    assert "not the model" in one_line(capsys)
    assert not (tmp_path / "b1").exists()

    traversal = tmp_path / "trav"
    shutil.copytree(encoded / "enc", traversal)
    manifest = json.loads((traversal / "_manifest.json").read_text())
    manifest["parts"][0]["file"] = "../enc/part-00000.parquet"
    (traversal / "_manifest.json").write_text(json.dumps(manifest))
    assert decode(traversal, tmp_path / "b2") != 0
    assert "bad part entry" in one_line(capsys)

    for broken in ({**manifest, "columns": []}, {**manifest, "version": "2"}):
        (traversal / "_manifest.json").write_text(json.dumps(broken))
        assert decode(traversal, tmp_path / "b3") != 0
        assert "not a valid gpu_vgm manifest" in one_line(capsys)

    damaged = tmp_path / "damaged"
    shutil.copytree(encoded / "enc", damaged)
    part = pq.read_table(damaged / "part-00000.parquet")
    z = part.column("Amount_normalized").to_numpy().copy()
    z[7] = np.inf
    i = part.schema.get_field_index("Amount_normalized")
    pq.write_table(
        part.set_column(i, part.schema.field(i), pa.array(z)), damaged / "part-00000.parquet"
    )
    assert decode(damaged, tmp_path / "b4") != 0
    assert "not the part the manifest lists" in one_line(capsys)  # its footer changed
    assert not (tmp_path / "b4").exists()
    # without the footer's hash (a version-1 manifest), the values themselves are checked; a
    # version-2 manifest without it is refused
    unchecked = json.loads((damaged / "_manifest.json").read_text())
    unchecked["version"] = 1
    for entry in unchecked["parts"]:
        entry.pop("footer_sha256")
    (damaged / "_manifest.json").write_text(json.dumps(unchecked))
    assert decode(damaged, tmp_path / "b4") != 0
    assert "1 NaN or infinite" in one_line(capsys)
    assert not (tmp_path / "b4").exists()

    assert decode(encoded / "in", tmp_path / "b5") != 0
    assert "no _manifest.json" in one_line(capsys)


# ------------------------------------------------------------------------- one line, really
def test_option_errors_and_worker_failures_are_one_line(tmp_path):
    """Through a real process: worker processes write to the terminal too, past capsys."""
    inp = write(
        tmp_path / "in" / "a.parquet",
        pa.table({"Amount": [1.0, 2.0, -np.inf] * 10}),
        write_statistics=False,  # found by a task on a worker, not from the footer
    )
    for args in (
        ["--input", str(inp), "--output", str(tmp_path / "out"), "--quiet", *FAST],
        ["--seed", str(2**32)],
        ["--special-values", "nan"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "gpu_vgm.run", *args], capture_output=True, text=True
        )
        assert proc.returncode != 0
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out").exists()


def test_fits_in_threads_of_one_worker_process_print_no_raw_warnings(tmp_path):
    """Eight columns on 4 cores are fitted in four threads of one worker process; none of them
    converges in 2 iterations, and one has fewer distinct values than components (k-means
    warns). --quiet must show nothing: the client logs non-convergence as a warning."""
    rng = np.random.default_rng(0)
    columns = {f"c{i}": np.round(rng.lognormal(3, 1.5, 50_000), 2) for i in range(7)}
    columns["few"] = rng.choice([0.5, 1.5, 7.25], 50_000)
    inp = write(tmp_path / "in" / "a.parquet", pa.table(columns))
    argv = ["--input", str(inp), "--output", str(tmp_path / "out"), "--backend", "cpu"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpu_vgm.run",
            *argv,
            "--workers",
            "4",
            "--max-iter",
            "2",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text())["workers"] == 4


# ------------------------------------------------------------------- review follow-ups
def test_hidden_outputs_next_to_the_input_are_allowed(encoded, tmp_path):
    """Names starting with "_" or "." are never read as input, so they may live inside it."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(encoded / "in", data)
    assert encode(data, data / "_enc", "--model-out", str(data / "model.json")) == 0
    assert (data / "model.json").exists()
    assert decode(data / "_enc", data / "_restored") == 0


def test_a_symlinked_parent_is_resolved_the_way_the_os_resolves_it(encoded, tmp_path, monkeypatch):
    import shutil

    proj, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    shutil.copytree(encoded / "in", proj / "x")
    (elsewhere / "t").mkdir(parents=True)
    (proj / "link").symlink_to(elsewhere / "t")
    monkeypatch.chdir(proj)
    before = pq.read_table(proj / "x")
    # "link/../x" is elsewhere/x for the OS, not proj/x (the input)
    assert encode("x", "link/../x", "--overwrite") == 0
    assert (elsewhere / "x" / "_manifest.json").exists()
    assert pq.read_table(proj / "x").equals(before)


def test_report_describes_integer_columns_float64_cannot_hold(tmp_path):
    from gpu_vgm import report

    x = np.random.default_rng(4).normal(100, 5, 3000)
    ids = np.arange(3000, dtype=np.int64) + 1_700_000_000_000_000_000  # ns timestamps
    inp = write(tmp_path / "in" / "a.parquet", pa.table({"Amount": x, "ts_ns": ids}))
    assert encode(inp, tmp_path / "enc", "--columns", "Amount") == 0
    assert report.main(["--input", str(tmp_path / "enc"), "--quiet"]) == 0


def test_a_mixture_fitted_on_values_near_the_limit_loads_back(tmp_path):
    x = np.concatenate([np.full(50, -1e150), np.full(50, 1e150)])
    model = ScaleVGM(column="v", n_components=1, max_iter=20).fit(x)
    assert model.stds_.max() > 1e150  # the case that was refused on load
    ScaleVGM.from_dict(json.loads(json.dumps(model.to_dict())))


def test_outputs_written_before_the_manifest_had_fields_and_a_fingerprint_decode(encoded, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(encoded / "enc", old)
    manifest = json.loads((old / "_manifest.json").read_text())
    del manifest["model_sha256"]
    for info in manifest["columns"].values():
        del info["field"]
    (old / "_manifest.json").write_text(json.dumps(manifest))
    assert decode(old, tmp_path / "back") == 0
    assert pq.read_table(tmp_path / "back").num_rows == 3000


def test_values_a_loaded_model_cannot_normalize_are_refused(tmp_path, capsys):
    small = write(tmp_path / "a" / "a.parquet", pa.table({"v": np.linspace(1, 100, 3000)}))
    model = tmp_path / "m.json"
    assert encode(small, tmp_path / "enc_a", "--dtype", "float32", "--model-out", str(model)) == 0
    far = write(tmp_path / "b" / "a.parquet", pa.table({"v": [5.0, 1e45, 7.0] * 10}))
    assert encode(far, tmp_path / "enc_b", "--model-in", str(model)) != 0
    assert "too far from the model" in one_line(capsys)
    assert not (tmp_path / "enc_b").exists()


def test_a_damaged_row_group_is_named(tmp_path, capsys):
    x = np.random.default_rng(5).normal(50, 5, 10_000)
    clean = write(tmp_path / "clean" / "a.parquet", pa.table({"v": x}), row_group_size=500)
    model = tmp_path / "m.json"
    assert encode(clean, tmp_path / "enc", "--model-out", str(model)) == 0
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    data = bytearray((clean / "a.parquet").read_bytes())
    chunk = pq.ParquetFile(clean / "a.parquet").metadata.row_group(13).column(0)
    start = chunk.data_page_offset + 40  # inside the page's values, past its header
    data[start : start + 200] = b"\xff" * 200
    (damaged / "a.parquet").write_bytes(bytes(data))
    args = ["--model-in", str(model), "--partition-size", "100000"]  # one task, 20 row groups
    assert encode(damaged, tmp_path / "out", *args) != 0
    err = one_line(capsys)
    assert "row group 13 " in err, err
    assert not (tmp_path / "out").exists()


def test_second_audit_paths_into_the_input_and_odd_urls(encoded, tmp_path, capsys):
    import shutil

    data, enc = tmp_path / "data", tmp_path / "enc"
    shutil.copytree(encoded / "in", data)
    shutil.copytree(encoded / "enc", enc)
    (data / "_metadata").write_bytes(b"a summary file Parquet readers use")
    pristine = {p.name: p.read_bytes() for p in [*data.iterdir(), *enc.iterdir()]}
    model = enc / "_model.json"
    (tmp_path / "out").mkdir()
    shutil.copy(model, tmp_path / "out" / "m.json")
    part = next(data.glob("*.parquet"))
    for call, message in [
        # hidden names are allowed inside the input only where nothing but gpu_vgm wrote
        (lambda: decode(enc, enc / "_model.json", "--overwrite"), "overlaps"),
        (lambda: encode(data, data / "_metadata", "--overwrite"), "overlaps"),
        # a model file inside the input must be a new JSON name, never an input file
        (
            lambda: encode(data, tmp_path / "o1", "--model-out", str(part), "--overwrite"),
            "overlaps",
        ),
        # --overwrite would delete the model before it is read
        (
            lambda: decode(
                enc, tmp_path / "out", "--model", str(tmp_path / "out" / "m.json"), "--overwrite"
            ),
            "overlaps",
        ),
        (lambda: encode(data, "foo://x"), "Protocol not known"),
        (lambda: encode(data, "memory://x"), "private to each process"),
    ]:
        assert call() != 0
        assert message in one_line(capsys)
    assert {p.name: p.read_bytes() for p in [*data.iterdir(), *enc.iterdir()]} == pristine
    assert (tmp_path / "out" / "m.json").exists()
    assert decode(f"file://{enc}", tmp_path / "back") == 0  # file:// is a local path
    assert encode(data, data / "_enc") == 0 and encode(data, data / "_enc", "--overwrite") == 0


# ---------------------------------------------------------------- third audit (issue 17)
def test_learned_rounding_on_a_float32_column_is_bit_exact_in_float32(tmp_path, capsys):
    """A float32 cent widened to float64 has no short decimal form: rounding is learned in
    float32, and every row comes back bit for bit with float32 output too (before, 1409 of
    50,000 rows changed and 0.0 came back as 8.3e-10)."""
    g = np.random.default_rng(3)
    cents = (np.rint(g.lognormal(3, 1.5, 50_000) * 100) / 100).astype(np.float32)
    cents[::97] = 0.0
    inp = write(tmp_path / "in" / "a.parquet", pa.table({"Amount": cents}))
    for dtype in ("float64", "float32"):
        out, back = tmp_path / f"enc-{dtype}", tmp_path / f"back-{dtype}"
        assert encode(inp, out, "--learn-rounding", "--dtype", dtype) == 0
        assert decode(out, back) == 0
        restored = pq.read_table(back).column("Amount")
        assert restored.type == pa.float32()
        assert np.array_equal(restored.to_numpy().view(np.int32), cents.view(np.int32))
        assert load_models(out / "_model.json")["Amount"].rounding_digits_ == 2
    capsys.readouterr()


def test_float32_output_says_what_it_loses(tmp_path, capsys):
    """--dtype float32 without learned rounding is lossy: the log says so and the manifest
    records each column's largest error (before, 835.92 came back as 835.919986645767 with
    not a word)."""
    g = np.random.default_rng(4)
    x = np.rint(g.lognormal(5, 1, 20_000) * 100) / 100
    inp = write(tmp_path / "in" / "a.parquet", pa.table({"Amount": x}))
    argv = ["--input", str(inp), "--output", str(tmp_path / "out"), *FAST, "--dtype", "float32"]
    assert run.main(argv) == 0
    err = capsys.readouterr().err
    assert "Amount: --dtype float32 without --learn-rounding is lossy" in err
    assert "Amount: largest decoding error" in err
    column = json.loads((tmp_path / "out" / "_manifest.json").read_text())["columns"]["Amount"]
    assert column["decoding"].startswith("lossy")
    assert decode(tmp_path / "out", tmp_path / "back") == 0
    restored = pq.read_table(tmp_path / "back").column("Amount").to_numpy()
    assert column["max_error"] == pytest.approx(np.abs(restored - x).max(), rel=1e-12)
    assert column["max_error"] > 0


def test_hive_partition_folders_are_refused_not_dropped(tmp_path, capsys):
    for year in (2023, 2024):
        write(tmp_path / "in" / f"year={year}" / "p.parquet", pa.table({"A": [1.5, 2.5]}))
    assert pq.read_table(tmp_path / "in").column_names == ["A", "year"]
    assert encode(tmp_path / "in", tmp_path / "out") == 2
    assert "'year=2023' is a Hive partition folder" in one_line(capsys)
    assert encode(f"{tmp_path}/in/*/*.parquet", tmp_path / "out") == 2  # a glob reaching in
    assert "'year=2023' is a Hive partition folder" in one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_a_model_file_with_a_special_value_twice_is_refused(tmp_path):
    data = _fitted_dict()
    data["fitted"]["special_values"] = [0.0, -0.0]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="special_values must be distinct"):
        ScaleVGM.load(path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"poor": "no"}, "fitted.fit.poor must be a boolean"),
        ({"still_rising": "0.1"}, "fitted.fit.still_rising must be a number"),
        ({"iterations": None}, "fitted.fit.iterations must be a non-negative integer"),
        ({"iterations": 12.5}, "fitted.fit.iterations must be a non-negative integer"),
        ({"iterations": -3}, "fitted.fit.iterations must be a non-negative integer"),
        ({"iterations": True}, "fitted.fit.iterations must be a non-negative integer"),
        ({"extra": 1}, "fitted.fit must have exactly the keys"),
    ],
)
def test_a_model_file_with_bad_fit_figures_is_refused(tmp_path, change, message):
    data = _fitted_dict()
    assert isinstance(data["fitted"]["fit"], dict)  # a mixture was fitted: its figures are kept
    data["fitted"]["fit"].update(change)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match=re.escape(message)):
        ScaleVGM.load(path)


def test_fit_options_with_a_model_in_are_refused(encoded, tmp_path, capsys):
    model = str(encoded / "enc" / "_model.json")
    for flag in (["--n-components", "3"], ["--learn-rounding"], ["--special-values", "0"]):
        argv = ["--input", str(encoded / "in"), "--output", str(tmp_path / "out")]
        assert run.main([*argv, *CLUSTER, "--model-in", model, *flag]) == 2
        assert f"{flag[0]} has no effect with --model-in" in one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_a_rounding_that_learns_nothing_says_so(tmp_path, capsys):
    x = np.random.default_rng(5).standard_normal(5_000)
    inp = write(tmp_path / "in" / "a.parquet", pa.table({"x": x}))
    argv = ["--input", str(inp), "--output", str(tmp_path / "out"), *FAST, "--learn-rounding"]
    assert run.main(argv) == 0
    assert "x: learned no rounding" in capsys.readouterr().err


def test_float32_output_blames_float32_not_decimals_for_large_integers(tmp_path, capsys):
    ints = np.random.default_rng(6).integers(0, 2_000_000_000, 20_000)
    inp = write(tmp_path / "in" / "a.parquet", pa.table({"n": ints}))
    extra = ["--columns", "n", "--n-components", "2", "--learn-rounding", "--dtype", "float32"]
    assert encode(inp, tmp_path / "out", *extra) == 2
    err = one_line(capsys)
    assert "from float32 normalized values" in err and "--dtype float64" in err
    assert "decimals" not in err


def test_empty_columns_option_is_refused(encoded, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:  # argparse's errors exit, as from the shell
        encode(encoded / "in", tmp_path / "out", "--columns", "")
    assert exited.value.code == 2
    assert "expected column names" in one_line(capsys)


def test_a_swapped_part_is_refused_by_inverse(tmp_path, capsys):
    x = np.random.default_rng(7).lognormal(3, 1, 4_000).round(2)
    inp = write(tmp_path / "in" / "a.parquet", pa.table({"Amount": x}), row_group_size=1000)
    assert encode(inp, tmp_path / "enc", "--partition-size", "1000") == 0
    first, second = tmp_path / "enc" / "part-00000.parquet", tmp_path / "enc" / "part-00001.parquet"
    first.rename(tmp_path / "swap")
    second.rename(first)
    (tmp_path / "swap").rename(second)
    assert decode(tmp_path / "enc", tmp_path / "back") == 2
    assert "not the part the manifest lists" in one_line(capsys)
    assert not (tmp_path / "back").exists()


@pytest.mark.parametrize(
    "options",
    [[], ["--special-values", "0"], ["--learn-rounding"]],
    ids=["plain", "special", "rounding"],
)
def test_negative_zero_keeps_its_sign(tmp_path, options):
    """-0.0 came back as +0.0 under the defaults, --special-values 0 and --learn-rounding, and
    compare, comparing values, called that equal. Now its sign survives, and +0.0 stays +0."""
    g = np.random.default_rng(8)
    x = np.rint(g.lognormal(3, 1, 20_000) * 100) / 100
    x[::40] = -0.0
    x[7::40] = 0.0
    inp = write(tmp_path / "in" / "a.parquet", pa.table({"Amount": x}))
    assert encode(inp, tmp_path / "enc", *options) == 0
    assert decode(tmp_path / "enc", tmp_path / "back") == 0
    back = pq.read_table(tmp_path / "back").column("Amount").to_numpy()
    zeros = x == 0
    assert np.array_equal(np.signbit(back[zeros]), np.signbit(x[zeros]))
    assert (np.signbit(x[zeros])).sum() == 500
    if "--learn-rounding" in options:  # bit-exact: compare, now by bits, finds all rows equal
        from gpu_vgm.compare import compare

        assert not any(compare(inp, tmp_path / "back")["mismatches"].values())


def test_a_float32_columns_model_on_a_float64_column_loses_nothing(tmp_path, capsys):
    """A model fitted on a float32 column, given with --model-in to float64 data: decoding
    stays within the contract (a cast to float32 at decode lost 19999 of 20000 rows)."""
    g = np.random.default_rng(10)
    x = g.lognormal(3, 1, 20_000)
    write(tmp_path / "in32" / "a.parquet", pa.table({"x": x.astype(np.float32)}))
    write(tmp_path / "in64" / "a.parquet", pa.table({"x": x}))
    assert encode(tmp_path / "in32", tmp_path / "enc32") == 0
    model = str(tmp_path / "enc32" / "_model.json")
    assert encode(tmp_path / "in64", tmp_path / "enc64", "--model-in", model) == 0
    assert decode(tmp_path / "enc64", tmp_path / "back") == 0
    from gpu_vgm.compare import compare

    result = compare(tmp_path / "in64", tmp_path / "back", model)
    assert result["rows"] == x.size and not any(result["mismatches"].values()), result


def test_a_byte_limit_below_one_row_still_gives_every_row(tmp_path):
    x = np.random.default_rng(11).lognormal(3, 1, 50).round(2)
    inp = write(tmp_path / "in" / "a.parquet", pa.table({"x": x}))
    assert encode(inp, tmp_path / "enc", "--partition-size", "10B", "--learn-rounding") == 0
    manifest = json.loads((tmp_path / "enc" / "_manifest.json").read_text())
    rows = [p["rows"] for p in manifest["parts"]]
    assert min(rows) >= 1 and sum(rows) == 50 and len(rows) > 10  # no empty part
    assert decode(tmp_path / "enc", tmp_path / "back") == 0
    assert np.array_equal(pq.read_table(tmp_path / "back").column("x").to_numpy(), x)
