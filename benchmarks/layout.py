"""Input-layout benchmark (not a test): the same rows in different Parquet layouts, encoded with
one model, side by side in one run.

    python benchmarks/layout.py [--rows 20000000] [--wide-rows 10000000] [--json OUT.json]

Layouts of ``--rows`` rows of three float columns:
  files-10       10 files of 1M-row row groups (the reference)
  one-group      one file holding a single row group
  files-2000     2000 files of rows / 2000 rows each
and ``wide-one-group``: a 20-column table of ``--wide-rows`` rows in one row group.

For each: encode time (``python -m gpu_vgm.run --model-in``, the manifest's encode timing, and
the whole command), its ratio to files-10, the peak RSS of ``run``'s process and of every worker
process, output parts, and whether the values equal files-10's (``gpu_vgm.compare``).
"""

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline import machine  # noqa: E402

from gpu_vgm.compare import compare  # noqa: E402

# Runs gpu_vgm.run in a child and prints that process's own peak RSS (workers are counted by
# the manifest). VmHWM, not getrusage: Linux keeps ru_maxrss across exec, so a child would
# report this benchmark's own peak.
_RUN = """
import sys
from gpu_vgm import run
code = run.main(sys.argv[1:])
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print("PEAK_RSS_MB", int(hwm) / 1024, file=sys.stderr)
sys.exit(code)
"""


def columns(rows, count, seed=0):
    """``count`` float columns of credit-like amounts in cents (each its own generator)."""
    out = {}
    for j in range(count):
        g = np.random.default_rng([seed, j])
        x = np.rint(g.lognormal(3.0 + 0.2 * j, 1.2, rows) * 100) / 100
        x[g.random(rows) < 0.01] = 0.0
        out[f"c{j:02d}"] = x
    return pa.table(out)


def write_layout(table, root, files, row_group):
    root.mkdir(parents=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(np.int64)
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        pq.write_table(
            table.slice(a, b - a), root / f"part-{i:05d}.parquet", row_group_size=row_group
        )


def encode(inp, out, model, workers, partition_size):
    argv = [sys.executable, "-c", _RUN, "--input", str(inp), "--output", str(out)]
    argv += ["--backend", "cpu", "--workers", str(workers), "--model-in", str(model), "--quiet"]
    if partition_size:
        argv += ["--partition-size", partition_size]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    client_rss = float(proc.stderr.split("PEAK_RSS_MB")[1].split()[0])
    manifest = json.loads((out / "_manifest.json").read_text())
    return {
        "encode_s": manifest["timings"]["encode"],
        "command_s": wall,
        "parts": len(manifest["parts"]),
        "peak_rss_mb_client": client_rss,
        "peak_rss_mb_worker": manifest["peak_rss_mb_per_worker"],
    }


def fit_model(inp, out, model, workers):
    argv = [sys.executable, "-m", "gpu_vgm.run", "--input", str(inp), "--output", str(out)]
    argv += ["--backend", "cpu", "--workers", str(workers), "--model-out", str(model), "-q"]
    subprocess.run(argv, check=True, cwd=ROOT)
    shutil.rmtree(out)


def run_benchmark(rows, wide_rows, workers, workdir, partition_size, repeat):
    workdir = Path(workdir or tempfile.mkdtemp(prefix="gpu_vgm-layout-"))
    narrow = columns(rows, 3)
    layouts = {
        "files-10": (narrow, 10, 1_000_000),
        "one-group": (narrow, 1, rows),
        "files-2000": (narrow, 2000, max(1, rows // 2000)),
    }
    for name, (table, files, group) in layouts.items():
        if not (workdir / name).exists():
            write_layout(table, workdir / name, files, group)
    del narrow, layouts
    if not (workdir / "wide-one-group").exists():
        write_layout(columns(wide_rows, 20, seed=1), workdir / "wide-one-group", 1, wide_rows)
    models = {"narrow": workdir / "model-narrow.json", "wide": workdir / "model-wide.json"}
    if not models["narrow"].exists():
        fit_model(workdir / "files-10", workdir / "fit", models["narrow"], workers)
    if not models["wide"].exists():
        fit_model(workdir / "wide-one-group", workdir / "fit", models["wide"], workers)
    results = {}
    names = ["files-10", "one-group", "files-2000", "wide-one-group"]
    for _ in range(repeat):  # alternated, each one's best kept: the machine is shared
        for name in names:
            out = workdir / f"out-{name}"
            shutil.rmtree(out, ignore_errors=True)
            model = models["wide" if name.startswith("wide") else "narrow"]
            r = encode(workdir / name, out, model, workers, partition_size)
            best = results.get(name)
            if best is None or r["encode_s"] < best["encode_s"]:
                results[name] = r
            if name not in ("files-10", "wide-one-group"):
                same = compare(workdir / "out-files-10", out)
                results[name]["identical_to_files_10"] = not any(same["mismatches"].values())
            if name != "files-10":
                shutil.rmtree(out)
    shutil.rmtree(workdir / "out-files-10")
    base = results["files-10"]["encode_s"]
    for name in names:
        results[name]["encode_vs_files_10"] = results[name]["encode_s"] / base
    return {
        "machine": machine(),
        "rows": rows,
        "wide_rows": wide_rows,
        "workers": workers,
        "partition_size": partition_size,
        "layouts": results,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--wide-rows", type=int, default=10_000_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--partition-size", default=None, help="default: run's own default")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="keeps the generated inputs for reruns")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    result = run_benchmark(
        args.rows, args.wide_rows, args.workers, args.workdir, args.partition_size, args.repeat
    )
    print(f"machine: {result['machine']}; {args.rows:,} rows, {args.workers} workers")
    for name, r in result["layouts"].items():
        print(
            f"  {name:15s} encode {r['encode_s']:6.2f} s ({r['encode_vs_files_10']:.2f}x), "
            f"command {r['command_s']:6.2f} s, {r['parts']:4d} parts, peak RSS client "
            f"{r['peak_rss_mb_client']:.0f} MB, worker {r['peak_rss_mb_worker']:.0f} MB"
            + (f", identical: {r['identical_to_files_10']}" if "identical_to_files_10" in r else "")
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
