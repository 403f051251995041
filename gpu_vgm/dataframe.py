"""``VGMEncoder``: gpu_vgm on Dask DataFrames (pandas- or cudf-backed) and pandas DataFrames.

Fit small, apply lazily (dask-ml's ParallelPostFit): ``fit`` computes each column's rows,
finite range and a uniform sample (keyed by the rows' positions, so the same whatever the
partitioning) and fits the mixtures as ``run`` does;
``transform`` and ``inverse_transform`` map the partition pipeline's ``encode_frame`` over the
partitions, each partition's global row offset a task of the graph, so that sample-mode draws
are keyed by the row's position in the whole DataFrame, as in ``run``.
"""

import numpy as np
import pyarrow as pa
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError as SklearnNotFittedError

from gpu_vgm import backends, errors, fitting, partition, rng, schema
from gpu_vgm.errors import InputError, shorten
from gpu_vgm.model import ScaleVGM
from gpu_vgm.modelfile import load_models, save_models
from gpu_vgm.params import check_magnitude

_SPLIT_EVERY = 8  # partitions' sample summaries merged per task


class NotFittedError(errors.NotFittedError, SklearnNotFittedError):
    """Raised before ``fit``: scikit-learn's NotFittedError and gpu_vgm's alike."""


class VGMEncoder(BaseEstimator):
    """Lossless mode-specific normalization of DataFrame columns.

    Parameters
    ----------
    columns : list of str or None, default None
        Columns to encode; None: every float column.
    n_components : int, default 10
        Mixture components per column.
    mode : {"sample", "argmax"}, default "sample"
        sample: a draw from the candidates' posterior (CTGAN); argmax: the most probable one.
    random_state : int, default 42
        Seeds the fit sample, the fit and sample-mode draws.
    sample_size : int, default 100_000
        Rows drawn uniformly from the whole DataFrame for each column's fit.
    special_values : sequence of float, default ()
        Values with their own component, decoded exactly.
    learn_rounding : bool, default False
        Learn decimals from the sample and round at decode (bit-exact cents).
    dtype : {"float64", "float32"}, default "float64"
        Dtype of the ``<col>_normalized`` columns.

    Attributes
    ----------
    models_ : dict of str to ScaleVGM
        The fitted model of each column (the same JSON as ``run``'s ``_model.json``).
    feature_names_in_ : ndarray of str
        The columns of the DataFrame ``fit`` saw.
    """

    def __init__(
        self,
        columns=None,
        n_components=10,
        mode="sample",
        random_state=42,
        sample_size=100_000,
        special_values=(),
        learn_rounding=False,
        dtype="float64",
    ):
        self.columns = columns
        self.n_components = n_components
        self.mode = mode
        self.random_state = random_state
        self.sample_size = sample_size
        self.special_values = special_values
        self.learn_rounding = learn_rounding
        self.dtype = dtype

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None):
        """Fit one mixture per column on a uniform sample of ``X``, covering its whole range."""
        columns = _select_columns(X, self.columns)
        if isinstance(self.sample_size, bool) or not (
            isinstance(self.sample_size, int) and self.sample_size >= 1
        ):
            raise ValueError(f"VGMEncoder: invalid sample_size={self.sample_size!r}")
        stats = _sample_and_ranges(X, columns, self.sample_size, self.random_state)
        models = {c: self._new_model(c) for c in columns}
        threads = max(1, min(len(columns), _cores()))
        self.models_ = fitting.fit_columns(models, stats["values"], stats["ranges"], threads)
        self.feature_names_in_ = np.array([str(c) for c in X.columns], dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)
        return self

    def _new_model(self, column):
        return ScaleVGM(
            n_components=self.n_components,
            random_state=self.random_state,
            mode=self.mode,
            column=column,
            special_values=tuple(self.special_values),
            learn_rounding=self.learn_rounding,
            dtype=self.dtype,
        )

    # ------------------------------------------------------------------ transform
    def transform(self, X):
        """``X`` with ``<col>_normalized`` and ``<col>_component`` for every encoded column.

        Lazy on a Dask DataFrame (nothing runs until ``.compute()``), index and divisions
        kept; a pandas DataFrame gives a pandas DataFrame.
        """
        models = self._models_for(X)
        types = {c: _arrow_type(X[c].dtype, c) for c in models}
        if not _is_dask(X):
            frame, _ = partition.encode_frame(_backend_for(X), X, models, types, 0, "the DataFrame")
            return frame
        meta = _encoded_meta(X._meta, models)
        offsets = _row_offsets(X)
        return X.map_partitions(
            _encode_partition, offsets, models, types, meta=meta, align_dataframes=False
        )

    def inverse_transform(self, X):
        """The encoded columns restored from ``<col>_normalized`` and ``<col>_component``, the
        added columns dropped (lazy on a Dask DataFrame)."""
        models = self._models_for(X, derived=True)
        if not _is_dask(X):
            return _decode_partition(X, models)
        meta = X._meta.drop(columns=_derived_names(models))
        absent = {c: np.zeros(0) for c in models if c not in meta.columns}  # float64
        return X.map_partitions(_decode_partition, models, meta=meta.assign(**absent))

    def _models_for(self, X, derived=False):
        if not hasattr(self, "models_"):
            raise NotFittedError(
                "This VGMEncoder is not fitted yet; call fit(ddf) or VGMEncoder.load(path) first"
            )
        wanted = list(self.columns) if self.columns else list(self.models_)
        unknown = [c for c in wanted if c not in self.models_]
        if unknown:
            raise InputError(
                f"column {unknown[0]!r}: the model has none (it has {shorten(self.models_)})"
            )
        needed = _derived_names(wanted) if derived else wanted
        missing = [c for c in needed if c not in X.columns]
        if missing:
            raise InputError(
                f"column {missing[0]!r} not found in the DataFrame (has {shorten(X.columns)})"
            )
        if not derived:  # as run: never overwrite a column of the user's
            taken = [n for n in _derived_names(wanted) if n in X.columns]
            if taken:
                raise InputError(f"column {taken[0]!r} already exists; rename it first")
        return {c: self.models_[c] for c in wanted}

    def get_feature_names_out(self, input_features=None):
        """The columns ``transform`` gives: the input's, then each encoded column's two."""
        if not hasattr(self, "models_"):
            raise NotFittedError("This VGMEncoder is not fitted yet")
        if input_features is None:
            input_features = getattr(self, "feature_names_in_", list(self.models_))
        names = [str(c) for c in input_features] + _derived_names(self.models_)
        return np.array(names, dtype=object)

    # ------------------------------------------------------------------ persistence
    def save(self, path):
        """The models as ``run``'s ``_model.json`` (``--model-in`` reads it too)."""
        if not hasattr(self, "models_"):
            raise NotFittedError("This VGMEncoder is not fitted yet")
        save_models(path, list(self.models_.values()))

    @classmethod
    def load(cls, path):
        """A fitted VGMEncoder from a model file (``save``'s, or ``run``'s ``_model.json``)."""
        models = load_models(path)
        first = next(iter(models.values()))
        encoder = cls(
            columns=list(models),
            n_components=first.n_components,
            mode=first.mode,
            random_state=first.random_state,
            special_values=tuple(first.special_values),
            learn_rounding=first.learn_rounding,
            dtype=first.dtype,
        )
        encoder.models_ = models
        return encoder


# ---------------------------------------------------------------------- helpers
def _is_dask(X):
    return hasattr(X, "map_partitions") and hasattr(X, "npartitions")


def _cores():
    from dask.system import CPU_COUNT

    return CPU_COUNT


def _backend_for(frame):
    """CudfGPU for cudf partitions (the CuPy kernels, on the device), else PandasCPU."""
    if type(frame).__module__.split(".")[0] == "cudf":
        return backends.CudfGPU()
    return backends.PandasCPU()


def _select_columns(X, requested):
    names = [str(c) for c in X.columns]
    if requested is not None:
        if isinstance(requested, str) or not all(isinstance(c, str) for c in requested):
            raise InputError(f"columns must be a list of column names, got {requested!r}")
        missing = [c for c in requested if c not in names]
        if missing:
            raise InputError(f"column {missing[0]!r} not found (has {shorten(names)})")
        columns = list(dict.fromkeys(requested))
    else:
        columns = [c for c in names if _kind(X[c].dtype) == "f"]
        if not columns:
            raise InputError("no floating-point columns to encode; name some with columns=[...]")
    for c in columns:
        if _kind(X[c].dtype) not in ("f", "i", "u"):
            raise InputError(f"column {c!r} is {X[c].dtype}, expected a numeric column")
    return columns


def _kind(dtype):
    """numpy's kind letter of a pandas, Arrow-backed or cudf dtype (" " when not numeric)."""
    try:
        return np.dtype(getattr(dtype, "numpy_dtype", dtype)).kind
    except TypeError:
        return " "


def _arrow_type(dtype, column):
    """The Arrow type of a numeric column (integers decode by rounding, every row checked)."""
    kind = np.dtype(getattr(dtype, "numpy_dtype", dtype))
    try:
        return pa.from_numpy_dtype(kind)
    except (pa.ArrowNotImplementedError, TypeError):
        raise InputError(f"column {column!r} is {dtype}, expected a numeric column") from None


def _derived_names(columns):
    return [n for c in columns for n in (schema.normalized_name(c), schema.component_name(c))]


# ------------------------------------------------------------- rows, ranges, sample
def _sample_and_ranges(X, columns, sample_size, seed):
    """{"rows", "ranges": {c: (lo, hi) or None}, "values": {c: sample}}: every row gets a key
    from the seed and its position in the whole DataFrame (``rng.row_keys``, distinct for
    distinct rows) and the rows with the ``sample_size`` smallest keys are kept, in the order of
    their keys: a uniform sample without replacement, the same rows in the same order however
    ``X`` is partitioned (a pandas DataFrame too), so the fitted models are too. Summaries are
    merged in a tree of tasks. A Dask DataFrame is read twice: the partitions' lengths, which
    give each partition's first row, then the sample and ranges."""
    key = rng.sample_key(seed)
    if not _is_dask(X):
        return _summarize(X[columns], columns, sample_size, key, 0)
    import dask
    from dask import delayed

    # The lengths of the very partitions summarized below: dask-expr may split a projection
    # of X (X[[one column]]) into partitions of other lengths than X[columns].
    partitions = X[columns].to_delayed()
    lengths = dask.compute(*[delayed(len)(p) for p in partitions])
    starts = np.cumsum([0, *lengths], dtype=np.int64)[:-1]
    summarize = delayed(_summarize, pure=True)
    merge = delayed(_merge, pure=True)
    level = [
        summarize(p, columns, sample_size, key, int(start))
        for p, start in zip(partitions, starts, strict=True)
    ]
    while len(level) > 1:
        level = [
            merge(level[i : i + _SPLIT_EVERY], sample_size)
            for i in range(0, len(level), _SPLIT_EVERY)
        ]
    (stats,) = dask.compute(level[0])
    return stats


def _summarize(frame, columns, sample_size, key, start):
    """One partition's rows, ranges and its rows of smallest key (``start``: its first row's
    position in the whole DataFrame)."""
    backend = _backend_for(frame)
    n = backend.num_rows(frame)
    keys = rng.row_keys(key, start, n)
    keep = _smallest(keys, sample_size)
    ranges, values = {}, {}
    for c in columns:
        x, _ = backend.column(frame, c, f"column {c!r}")
        x = backend.to_host(x)
        if np.isinf(x).any():
            raise InputError(f"column {c!r} holds {int(np.isinf(x).sum())} infinite values")
        finite = x[~np.isnan(x)]
        ranges[c] = (float(finite.min()), float(finite.max())) if finite.size else None
        if ranges[c]:
            check_magnitude(*ranges[c], c)
        values[c] = x[keep].astype(_sample_dtype(frame[c].dtype))
    return {"rows": n, "ranges": ranges, "keys": keys[keep], "values": values}


def _sample_dtype(dtype):
    """float32 for float32 columns (learned rounding then holds in float32), else float64."""
    return (
        np.float32
        if _kind(dtype) == "f" and np.dtype(getattr(dtype, "numpy_dtype", dtype)).itemsize <= 4
        else np.float64
    )


def _smallest(keys, count):
    """Positions of the ``count`` smallest of distinct ``keys``, in the order of the keys."""
    if keys.size > count:
        kept = np.argpartition(keys, count - 1)[:count]
        return kept[np.argsort(keys[kept])]
    return np.argsort(keys)


def _merge(summaries, sample_size):
    keys = np.concatenate([s["keys"] for s in summaries])
    keep = _smallest(keys, sample_size)
    ranges = {}
    for c in summaries[0]["ranges"]:
        found = [s["ranges"][c] for s in summaries if s["ranges"][c] is not None]
        ranges[c] = (min(r[0] for r in found), max(r[1] for r in found)) if found else None
    values = {
        c: np.concatenate([s["values"][c] for s in summaries])[keep] for c in summaries[0]["values"]
    }
    return {
        "rows": sum(s["rows"] for s in summaries),
        "ranges": ranges,
        "keys": keys[keep],
        "values": values,
    }


# ------------------------------------------------------------- the partitions
def _row_offsets(X):
    """Each partition's global row offset, lazily: a one-row frame per partition whose value
    is the number of rows before it (the lengths' cumulative sum, minus its own)."""
    meta = type(X._meta)({"rows": np.zeros(0, dtype=np.int64)})
    lengths = X.map_partitions(_length, meta=meta)
    return lengths["rows"].cumsum() - lengths["rows"]


def _length(frame):
    return type(frame)({"rows": np.array([len(frame)], dtype=np.int64)})


def _encode_partition(frame, offset, models, types):
    row_offset = int(offset.iloc[0]) if len(offset) else 0
    source = f"the DataFrame's partition from row {row_offset}"
    encoded, _ = partition.encode_frame(
        _backend_for(frame), frame, models, types, row_offset, source
    )
    return encoded


def _encoded_meta(meta, models):
    extra = {}
    for c, m in models.items():
        extra[schema.normalized_name(c)] = np.zeros(0, dtype=m.dtype)
        extra[schema.component_name(c)] = np.zeros(0, dtype=np.int16)
    return meta.assign(**extra)


def _decode_partition(frame, models):
    if type(frame).__module__.split(".")[0] == "cudf":
        from gpu_vgm import gpu_frames

        return gpu_frames.decode_frame(frame, models)
    import pandas as pd

    restored = {}
    for c, model in models.items():
        z = frame[schema.normalized_name(c)].to_numpy()
        comp, nulls = schema.split_nulls(frame[schema.component_name(c)].to_numpy())
        values = model.inverse_transform(z, comp)
        dtype = frame[c].dtype if c in frame.columns else np.dtype(np.float64)
        restored[c] = pd.Series(_as_dtype(values, nulls, dtype), index=frame.index)
    return frame.drop(columns=_derived_names(models)).assign(**restored)


def _as_dtype(values, nulls, dtype):
    """Decoded float64 values as a pandas array of the column's dtype; nulls where the
    encoding marked them (NaN for NumPy float columns, which have no nulls of their own)."""
    import pandas as pd

    if isinstance(dtype, pd.ArrowDtype):
        arrow = schema.restore(values, dtype.pyarrow_dtype, nulls)
        return pd.arrays.ArrowExtensionArray(arrow)
    target = np.dtype(getattr(dtype, "numpy_dtype", dtype))
    if target.kind != "f":
        values = np.rint(np.where(np.isnan(values), 0, values))
    if isinstance(dtype, np.dtype):
        if nulls is not None and target.kind == "f":
            values = np.where(nulls, np.nan, values)
        return values.astype(target)
    mask = np.zeros(values.size, bool) if nulls is None else nulls  # pandas' masked dtypes
    if target.kind == "f":
        return pd.arrays.FloatingArray(values.astype(target), mask)
    return pd.arrays.IntegerArray(values.astype(target), mask)
