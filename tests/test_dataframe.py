"""VGMEncoder on Dask DataFrames (pandas-backed) and pandas DataFrames: the CLI's bits, lazy."""

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dask.callbacks import Callback
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from gpu_vgm import InputError, VGMEncoder, run

pytestmark = pytest.mark.filterwarnings("ignore:.*did not converge")
ROWS = 30_000


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Three files of cents with NaN, nulls and zeros, and an integer column."""
    root = tmp_path_factory.mktemp("api")
    g = np.random.default_rng(21)
    for i in range(3):
        cents = np.rint(g.lognormal(3, 1.3, ROWS) * 100) / 100
        cents[::50] = 0.0
        cents[7::97] = np.nan
        table = pa.table(
            {
                "Amount": pa.array(cents, mask=g.random(ROWS) < 0.01),
                "score": g.normal(size=ROWS),
                "n": g.integers(0, 1000, ROWS),
            }
        )
        pq.write_table(table, root / f"part-{i}.parquet", row_group_size=7_000)
    return root


def _read(files):
    paths = sorted(str(p) for p in files.glob("*.parquet"))
    return dd.read_parquet(paths, dtype_backend="pyarrow")  # keeps nulls apart from NaN


@pytest.mark.parametrize("mode", ["argmax", "sample"])
def test_the_api_gives_runs_columns_on_the_same_files_and_model(files, tmp_path, mode):
    out = tmp_path / "out"
    argv = ["--input", str(files), "--output", str(out), "--mode", mode, "--sample-size", "5000"]
    assert run.main([*argv, "--backend", "cpu", "--workers", "2", "-q"]) == 0
    enc = VGMEncoder.load(out / "_model.json")
    ours = enc.transform(_read(files)).compute()
    theirs = pq.read_table(out)
    for name in ("Amount_normalized", "Amount_component", "score_normalized", "score_component"):
        expected = theirs.column(name).to_numpy()
        got = ours[name].to_numpy()
        assert got.dtype == expected.dtype, name
        assert np.array_equal(got.view(np.uint8), expected.view(np.uint8)), name  # bits
    assert (ours["Amount_component"] == -2).sum() > 0  # nulls, as run gives them
    assert (ours["Amount_component"] == -1).sum() > 0  # and NaN


def test_repartitioning_changes_no_value(files):
    ddf = _read(files)
    enc = VGMEncoder(sample_size=5_000).fit(ddf)
    whole = enc.transform(ddf).compute()
    for n in (1, 5, 17):
        again = enc.transform(ddf.repartition(npartitions=n)).compute()
        pd.testing.assert_frame_equal(again.reset_index(drop=True), whole.reset_index(drop=True))


@pytest.mark.parametrize("sample_size", [5_000, 100_000])  # fewer rows, then more than ROWS * 3
def test_the_fit_does_not_depend_on_the_partitioning(files, sample_size):
    ddf = _read(files)
    enc = VGMEncoder(columns=["Amount", "n"], sample_size=sample_size)
    expected = {c: m.to_dict() for c, m in enc.fit(ddf).models_.items()}
    reseeded = clone(enc).set_params(random_state=7).fit(ddf).models_["n"].to_dict()
    assert reseeded != expected["n"]  # models that can differ: equal ones below are no given
    frame = ddf.compute().reset_index(drop=True)
    for other in (
        frame,  # a pandas DataFrame: no Dask, one piece
        ddf.repartition(npartitions=1),
        ddf.repartition(npartitions=7),  # boundaries unlike the files'
        dd.from_pandas(frame, npartitions=4),
    ):
        got = {c: m.to_dict() for c, m in clone(enc).fit(other).models_.items()}
        assert got == expected


def test_inverse_transform_restores_the_input_exactly(files):
    ddf = _read(files)
    enc = VGMEncoder(columns=["Amount", "n"], learn_rounding=True, sample_size=5_000).fit(ddf)
    out = enc.transform(ddf)
    back = enc.inverse_transform(out).compute()
    original = ddf.compute()
    assert list(back.columns) == list(original.columns)
    pd.testing.assert_frame_equal(back, original)


def test_a_pandas_dataframe_gives_pandas_and_the_same_values(files):
    ddf = _read(files)
    frame = ddf.compute()
    enc = VGMEncoder(sample_size=5_000).fit(frame)
    encoded = enc.transform(frame)
    assert isinstance(encoded, pd.DataFrame)
    lazy = enc.transform(ddf).compute()
    pd.testing.assert_frame_equal(encoded, lazy)
    pd.testing.assert_frame_equal(enc.inverse_transform(encoded)[frame.columns], frame)


class _Counter(Callback):
    def __init__(self):
        super().__init__()
        self.tasks = 0

    def _pretask(self, key, dsk, state):
        self.tasks += 1


def test_transform_runs_nothing_until_compute(files):
    ddf = _read(files)
    enc = VGMEncoder(sample_size=5_000).fit(ddf)
    with dask.config.set(scheduler="sync"), _Counter() as counter:
        out = enc.transform(ddf)
        back = enc.inverse_transform(out)
        assert counter.tasks == 0
        assert out.divisions == ddf.divisions and out.npartitions == ddf.npartitions
        assert list(out._meta.columns) == list(enc.get_feature_names_out())
        back.compute()
        assert counter.tasks > 0


def test_scikit_learn_conventions(files):
    enc = VGMEncoder(n_components=4, mode="argmax")
    assert enc.get_params()["n_components"] == 4
    enc.set_params(n_components=5)
    assert clone(enc).get_params() == enc.get_params()
    with pytest.raises(NotFittedError, match="not fitted"):
        enc.transform(_read(files))
    enc.fit(_read(files))
    assert list(enc.models_) == ["Amount", "score"]  # every float column, as run
    assert enc.models_["Amount"].n_components == 5
    assert list(enc.get_feature_names_out()) == [
        "Amount",
        "score",
        "n",
        "Amount_normalized",
        "Amount_component",
        "score_normalized",
        "score_component",
    ]


def test_save_writes_runs_model_file_and_load_reads_it_back(files, tmp_path):
    enc = VGMEncoder(sample_size=5_000).fit(_read(files))
    enc.save(tmp_path / "m.json")
    back = VGMEncoder.load(tmp_path / "m.json")
    a = enc.transform(_read(files)).compute()
    pd.testing.assert_frame_equal(a, back.transform(_read(files)).compute())
    out = tmp_path / "out"
    argv = ["--input", str(files), "--output", str(out), "--model-in", str(tmp_path / "m.json")]
    assert run.main([*argv, "--backend", "cpu", "--workers", "1", "-q"]) == 0
    assert np.array_equal(
        pq.read_table(out).column("score_normalized").to_numpy(), a["score_normalized"].to_numpy()
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda ddf: VGMEncoder(columns=["nope"]).fit(ddf), "column 'nope' not found"),
        (
            lambda ddf: VGMEncoder(columns=["label"]).fit(ddf.assign(label="x")),
            "column 'label' is",
        ),
        (
            lambda ddf: VGMEncoder(sample_size=2_000).fit(ddf).transform(ddf.drop(columns="score")),
            "column 'score' not found in the DataFrame",
        ),
        (
            lambda ddf: (
                VGMEncoder(sample_size=2_000).fit(ddf).set_params(columns=["n"]).transform(ddf)
            ),
            "column 'n': the model has none",
        ),
    ],
)
def test_bad_inputs_are_one_clear_line(files, make, message):
    with pytest.raises(InputError, match=message) as info:
        make(_read(files))
    assert "\n" not in str(info.value)


def test_infinite_values_are_refused_at_fit(files):
    frame = _read(files).compute()
    frame.iloc[5, frame.columns.get_loc("score")] = np.inf
    with pytest.raises(InputError, match="column 'score' holds 1 infinite values"):
        VGMEncoder(sample_size=2_000).fit(dd.from_pandas(frame, npartitions=3))


def test_an_existing_derived_column_is_refused_and_inverse_needs_only_the_derived(files):
    ddf = _read(files)
    enc = VGMEncoder(columns=["score"], sample_size=2_000).fit(ddf)
    with pytest.raises(InputError, match="column 'score_component' already exists"):
        enc.transform(ddf.assign(score_component=1))
    out = enc.transform(ddf).compute()
    derived_only = out[["score_normalized", "score_component"]]
    back = enc.inverse_transform(derived_only)  # generated data: no original column
    assert np.array_equal(back["score"].to_numpy(), enc.inverse_transform(out)["score"].to_numpy())
