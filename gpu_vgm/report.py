"""``python -m gpu_vgm.report``: what the original's stats.py printed, plus the fit.

For an input dataset: rows, missing values and describe() per numeric column. For a gpu_vgm
output directory (it has ``_model.json``): also, per encoded column, a PNG of the histogram
with the fitted mixture, component usage, and roundtrip error statistics (decode of the
encoded columns against the kept input column).

Example:
    python -m gpu_vgm.report --input data/demo/encoded --output data/demo/report
"""

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from gpu_vgm import cli, schema
from gpu_vgm.compare import iter_batches
from gpu_vgm.errors import InputError

log = logging.getLogger("gpu_vgm")
HIST_SAMPLE = 2_000_000  # rows kept for the histogram (a uniform-stride subset)


FIRST_ID = schema.NULL_COMPONENT  # the lowest component id: usage[i] counts id FIRST_ID + i


def _describe_accumulators(columns):
    empty = {"count": 0, "missing": 0, "sum": 0.0, "sumsq": 0.0, "min": np.inf, "max": -np.inf}
    return {c: {**empty, "sample": []} for c in columns}


def _add_to_describe(a, x):
    finite = x[np.isfinite(x)]
    a["missing"] += int(np.isnan(x).sum())
    a["count"] += x.size
    if finite.size:
        a["sum"] += float(finite.sum())
        a["sumsq"] += float(np.square(finite).sum())
        a["min"] = min(a["min"], float(finite.min()))
        a["max"] = max(a["max"], float(finite.max()))
        a["sample"].append(finite[:: max(1, finite.size // 20_000)])


def _add_to_fit(usage, err, model, x, z, comp):
    usage += np.bincount(comp - FIRST_ID, minlength=usage.size)[: usage.size]
    comp, _ = schema.split_nulls(comp)
    back = model.inverse_transform(z, comp)
    ok = ~np.isnan(x)
    d = np.abs(back[ok] - x[ok])
    if d.size:
        err["max_abs"] = max(err["max_abs"], float(d.max()))
        err["bit_exact"] += int(np.count_nonzero(d == 0))
    err["rows_checked"] += int(ok.sum())


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
    for batch in iter_batches(url, names):
        for c in columns:
            x = schema.to_float64(batch.column(c), c, url)
            _add_to_describe(acc[c], x)
            if c in models:
                z = batch.column(schema.normalized_name(c)).to_numpy()
                comp = batch.column(schema.component_name(c)).to_numpy()
                _add_to_fit(usage[c], err[c], models[c], x, z, comp)
    return _describe(acc), usage, err


def _describe(acc):
    """(describe() per column, the strided sample kept for each histogram)."""
    out, samples = {}, {}
    for c, a in acc.items():
        n = a["count"] - a["missing"]
        mean = a["sum"] / n if n else float("nan")
        var = max(a["sumsq"] / n - mean * mean, 0.0) if n else float("nan")
        sample = np.concatenate(a["sample"]) if a["sample"] else np.zeros(0)
        q = np.quantile(sample, [0.25, 0.5, 0.75]) if sample.size else [np.nan] * 3
        out[c] = {
            "rows": a["count"],
            "missing": a["missing"],
            "mean": mean,
            "std": float(np.sqrt(var)),
            "min": a["min"],
            "25%": float(q[0]),
            "50%": float(q[1]),
            "75%": float(q[2]),
            "max": a["max"],
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
    ax2.set_title(f"{column}: rows per component (-1 = NaN, -2 = null)")
    ax2.set_xlabel("component id")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run(args):
    from gpu_vgm import inputs
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
    (stats, samples), usage, err = scan(args.input, numeric, models)
    print(f"{sum(f.num_rows for f in files)} rows in {len(files)} files ({args.input})")
    for c, s in stats.items():
        print(
            f"{c}: missing {s['missing']}; "
            + ", ".join(
                f"{k} {s[k]:.6g}" for k in ("mean", "std", "min", "25%", "50%", "75%", "max")
            )
        )
    report = {"describe": stats}
    if models:
        out = Path(args.output or Path(args.input) / "_report")
        out.mkdir(parents=True, exist_ok=True)
        for c, m in models.items():
            png = out / f"{c}_fit.png"
            plot_column(c, m, samples[c], usage[c], png)
            used = {int(k) + FIRST_ID: int(n) for k, n in enumerate(usage[c]) if n}
            print(f"{c}: {int(m.active_.sum())} active components; rows per component {used}")
            print(
                f"{c}: roundtrip max |error| {err[c]['max_abs']:.3g} "
                f"over {err[c]['rows_checked']} rows, {err[c]['bit_exact']} of them bit-exact"
            )
            print(f"{c}: plot {png}")
        report["components"] = {
            c: {int(k) + FIRST_ID: int(n) for k, n in enumerate(u) if n} for c, u in usage.items()
        }
        report["roundtrip"] = err
        (out / "report.json").write_text(json.dumps(report, indent=1))
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
