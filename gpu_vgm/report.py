"""``python -m gpu_vgm.report``: what the original's stats.py printed, plus the fit.

For an input dataset: rows, missing values and describe() per numeric column. For a gpu_vgm
output directory (it has ``_model.json``): also, per encoded column, a PNG of the histogram
with the fitted mixture, component usage, and roundtrip error statistics (decode of the
encoded columns against the kept input column). The report folder (default INPUT/_report) is
built under a temporary name and renamed into place when complete; it replaces an earlier
report, never anything else.

Example:
    python -m gpu_vgm.report --input data/demo/encoded --output data/demo/report
"""

import argparse
import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from gpu_vgm import atomic, cli, inputs, schema
from gpu_vgm.compare import iter_file_batches
from gpu_vgm.errors import InputError, OutputError, VGMError, shorten

log = logging.getLogger("gpu_vgm")
HIST_SAMPLE = 2_000_000  # rows kept for the histogram (a uniform-stride subset)


FIRST_ID = schema.NEG_ZERO_COMPONENT  # the lowest component id: usage[i] counts id FIRST_ID + i


def _describe_accumulators(columns):
    empty = {
        "count": 0,
        "missing": 0,
        "finite": 0,
        "sum": 0.0,
        "sumsq": 0.0,
        "min": np.inf,
        "max": -np.inf,
    }
    return {c: {**empty, "sample": []} for c in columns}


def _add_to_describe(a, x):
    finite = x[np.isfinite(x)]
    a["missing"] += int(np.isnan(x).sum())
    a["count"] += x.size
    a["finite"] += finite.size
    if finite.size:
        a["sum"] += float(finite.sum())
        a["sumsq"] += float(np.square(finite).sum())
        a["min"] = min(a["min"], float(finite.min()))
        a["max"] = max(a["max"], float(finite.max()))
        a["sample"].append(finite[:: max(1, finite.size // 20_000)])


def _encoded(batch, column, n_ids, path):
    """(normalized, component ids) of one column, checked as bincount and the kernels need."""
    z_name, c_name = schema.normalized_name(column), schema.component_name(column)
    z, comp = batch.column(z_name), batch.column(c_name)
    if z.null_count or comp.null_count:
        raise InputError(f"{path}: {z_name!r} or {c_name!r} holds nulls; not a gpu_vgm output")
    if not (pa.types.is_floating(z.type) and pa.types.is_integer(comp.type)):
        raise InputError(
            f"{path}: {z_name!r} is {z.type} and {c_name!r} is {comp.type}; "
            "expected floats and integer component ids"
        )
    comp = comp.to_numpy()
    bad = (comp < FIRST_ID) | (comp >= n_ids)
    if bad.any():
        raise InputError(
            f"{path}: column {c_name!r} holds {int(bad.sum())} component ids outside "
            f"{FIRST_ID}..{n_ids - 1} (e.g. {comp[bad][0]})"
        )
    return z.to_numpy(), comp


def _add_to_fit(usage, err, model, x, z, comp, path):
    usage += np.bincount(comp - FIRST_ID, minlength=usage.size)[: usage.size]
    comp, _ = schema.split_nulls(comp)
    try:
        back = model.inverse_transform(z, comp)
    except VGMError as exc:
        raise InputError(f"{path}: {exc}") from None
    ok = ~np.isnan(x)
    d = np.abs(back[ok] - x[ok])
    if d.size:
        err["max_abs"] = max(err["max_abs"], float(d.max()))
        err["bit_exact"] += int(np.count_nonzero(d == 0))
    err["rows_checked"] += int(ok.sum())


@np.errstate(over="ignore", invalid="ignore")  # inf and huge values: the stats say so
def scan(url, columns, models):
    """One streaming pass over the data: describe() of ``columns`` and, for each column in
    ``models``, rows per component id (``usage[c][i]``: id FIRST_ID + i) and roundtrip error
    (decode of the encoded columns against the kept input column)."""
    acc = _describe_accumulators(columns)
    usage = {c: np.zeros(m.kernel_params_.n_ids - FIRST_ID, np.int64) for c, m in models.items()}
    err = {c: {"max_abs": 0.0, "bit_exact": 0, "rows_checked": 0} for c in models}
    names = list(columns)
    for c in models:
        names += [schema.normalized_name(c), schema.component_name(c)]
    for path, batch in iter_file_batches(url, names):
        for c in columns:
            x = schema.to_float64(batch.column(c), c, path, exact=False)
            _add_to_describe(acc[c], x)
            if c in models:
                z, comp = _encoded(batch, c, models[c].kernel_params_.n_ids, path)
                _add_to_fit(usage[c], err[c], models[c], x, z, comp, path)
    return _describe(acc), usage, err


def _describe(acc):
    """(describe() per column, the strided sample kept for each histogram): mean, std,
    quantiles, min and max of the finite values."""
    out, samples = {}, {}
    for c, a in acc.items():
        n = a["finite"]
        mean = a["sum"] / n if n else float("nan")
        var = max(a["sumsq"] / n - mean * mean, 0.0) if n else float("nan")
        sample = np.concatenate(a["sample"]) if a["sample"] else np.zeros(0)
        q = np.quantile(sample, [0.25, 0.5, 0.75]) if sample.size else [np.nan] * 3
        out[c] = {
            "rows": a["count"],
            "missing": a["missing"],
            "mean": mean,
            "std": float(np.sqrt(var)),
            "min": a["min"] if n else float("nan"),
            "25%": float(q[0]),
            "50%": float(q[1]),
            "75%": float(q[2]),
            "max": a["max"] if n else float("nan"),
        }
        samples[c] = sample
    return out, samples


def plot_column(column, model, values, usage, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    lo, hi = model.value_range_
    grid = np.linspace(lo, hi, 4000)
    ax1.hist(values, bins=200, range=(lo, hi), density=True, color="#9ab", label="data")
    total = np.zeros_like(grid)
    for k in np.flatnonzero(model.active_):
        w = model.weights_[k] if model.origin_[k] != "synthetic" else 0.0
        dens = (
            w
            * np.exp(-0.5 * ((grid - model.means_[k]) / model.stds_[k]) ** 2)
            / (model.stds_[k] * np.sqrt(2 * np.pi))
        )
        total += dens
        ax1.axvspan(
            model.means_[k] - 3.96 * model.stds_[k],
            model.means_[k] + 3.96 * model.stds_[k],
            color="orange",
            alpha=0.03,
        )
    ax1.plot(grid, total, color="crimson", lw=1.5, label="fitted mixture")
    ax1.set_xlim(lo, hi)
    ax1.set_yscale("log")
    ax1.set_ylim(bottom=max(total[total > 0].min(initial=1e-12), 1e-12))
    ax1.set_title(f"{column}: histogram and fitted mixture (shaded: |z| <= 0.99 bands)")
    ax1.legend()
    ids = np.arange(FIRST_ID, FIRST_ID + usage.size)
    ax2.bar(ids, usage, color="#47a")
    ax2.set_title(f"{column}: rows per component (-1 = NaN, -2 = null, -3 = -0.0)")
    ax2.set_xlabel("component id")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def png_name(column):
    """A file name for a column's plot: its name where that is a plain, short file name, else
    a cleaned prefix and a hash (a name like "a/b" or 5000 characters long is no file name)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", column)[:80]
    if safe != column or safe.startswith("."):
        digest = hashlib.sha256(column.encode("utf-8")).hexdigest()[:10]
        safe = f"{safe.lstrip('.')}-{digest}"
    return f"{safe}_fit.png"


def _is_report(path):
    """An earlier report (or an empty folder): the only thing a new report may replace."""
    if path.is_symlink() or not path.is_dir():
        return False
    return all(p.name == "report.json" or p.name.endswith("_fit.png") for p in path.iterdir())


def _check_output(out):
    """Fail before the scan where the report cannot go: an existing path that is not an
    earlier report, or no writable folder to create it in (missing parents are created)."""
    if (out.exists() or out.is_symlink()) and not _is_report(out):
        raise OutputError(f"{out} exists and is not a gpu_vgm report; choose another --output")
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {out}: {parent} is not a writable folder")


def _write_report(out, report, models, samples, usage):
    _check_output(out)  # again: the scan takes a while
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
    with atomic.atomic_directory(out, overwrite=out.exists()) as tmp:
        try:
            for c, m in models.items():
                plot_column(c, m, samples[c], usage[c], tmp / png_name(c))
            (tmp / "report.json").write_text(json.dumps(report, indent=1))
        except OSError as exc:
            raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None


def _run(args):
    from gpu_vgm.modelfile import load_models

    fs, paths = inputs.list_parquet_files(args.input)
    files = inputs.read_metadata(fs, paths)
    numeric = [
        f.name
        for f in files[0].schema
        if inputs.is_encodable_type(f.type) and not f.name.endswith(("_normalized", "_component"))
    ]
    models = {}
    model_path = Path(args.input) / "_model.json"
    if model_path.exists():
        models = {c: m for c, m in load_models(model_path).items() if c in numeric}
        if not models:
            raise InputError(f"{args.input}: the encoded columns are not in the data")
    needed = numeric + [
        n for c in models for n in (schema.normalized_name(c), schema.component_name(c))
    ]
    for f in files:  # Parquet readers skip a missing column without a word
        missing = [n for n in needed if n not in f.schema.names]
        if missing:
            raise InputError(
                f"{f.path}: column {missing[0]!r} not found (has {shorten(f.schema.names)})"
            )
    out = Path(args.output or Path(args.input) / "_report")
    if models:
        _check_output(out)
    (stats, samples), usage, err = scan(args.input, numeric, models)
    report = {"describe": stats}
    if models:
        report["components"] = {
            c: {int(k) + FIRST_ID: int(n) for k, n in enumerate(u) if n} for c, u in usage.items()
        }
        report["roundtrip"] = err
        report["plots"] = {c: png_name(c) for c in models}
        _write_report(out, report, models, samples, usage)
    print(f"{sum(f.num_rows for f in files)} rows in {len(files)} files ({args.input})")
    for c, s in stats.items():
        print(
            f"{c}: missing {s['missing']}; "
            + ", ".join(
                f"{k} {s[k]:.6g}" for k in ("mean", "std", "min", "25%", "50%", "75%", "max")
            )
        )
    for c, m in models.items():
        print(
            f"{c}: {int(m.active_.sum())} active components; "
            f"rows per component {report['components'][c]}"
        )
        print(
            f"{c}: roundtrip max |error| {err[c]['max_abs']:.3g} "
            f"over {err[c]['rows_checked']} rows, {err[c]['bit_exact']} of them bit-exact"
        )
        print(f"{c}: plot {out / png_name(c)}")
    return 0


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m gpu_vgm.report",
        description="Statistics of a dataset, and the fit of gpu_vgm output.",
    )
    p.add_argument(
        "--input", required=True, help="input or encoded dataset (e.g. data/demo/encoded)"
    )
    p.add_argument(
        "--output",
        default=None,
        help="folder for the PNGs and report.json (default: INPUT/_report)",
    )
    cli.add_verbosity(p)
    return p


def main(argv=None):
    return cli.run_command(build_parser(), _run, argv)


if __name__ == "__main__":
    cli.run_main(main)
