"""``python -m gpu_vgm.run``: encode every row of the chosen columns of a Parquet dataset.

Example:
    python -m gpu_vgm.run --input data/scaled_data_1b/ --output data/transformed_data_1b/ --gpus 1
"""

import argparse
import logging
import math
import time

from gpu_vgm import cli, heap
from gpu_vgm.backends import choose_backend
from gpu_vgm.params import MAX_COMPONENTS, MAX_SEED

log = logging.getLogger("gpu_vgm")


def _floats(text):
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0,-1, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def _column_names(text):
    names = [c for c in text.split(",") if c]
    if not names:
        raise argparse.ArgumentTypeError(f"expected column names like A,B, got {text!r}")
    return names


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m gpu_vgm.run",
        description="Encode continuous columns with lossless mode-specific normalization.",
    )
    p.add_argument(
        "--input",
        default="data/scaled_data_1b/",
        help="Parquet file, directory, glob or fsspec URL (e.g. --input data/in/)",
    )
    p.add_argument(
        "--output",
        default="data/transformed_data_1b/",
        help="output directory, created atomically (e.g. --output data/out/)",
    )
    p.add_argument(
        "--columns",
        type=_column_names,
        default=[],
        help="columns to encode (default: every float column; e.g. --columns Amount)",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "gpu", "cpu"),
        default="auto",
        help="auto: GPU when usable, else CPU, saying why (e.g. --backend cpu)",
    )
    p.add_argument(
        "--gpus",
        type=cli.int_at_least(1),
        default=1,
        help="GPUs for the LocalCUDACluster (e.g. --gpus 2)",
    )
    p.add_argument(
        "--workers",
        type=cli.int_at_least(1),
        default=None,
        help="CPU cores to use, as worker threads, up to 4 per process (default: every core "
        "this process may use; e.g. --workers 2)",
    )
    p.add_argument(
        "--scheduler-address",
        default=None,
        help="join an existing Dask cluster (e.g. --scheduler-address tcp://host:8786)",
    )
    p.add_argument(
        "--mode",
        choices=("argmax", "sample"),
        default=None,
        help="component choice (default argmax; e.g. --mode sample)",
    )
    p.add_argument(
        "--seed",
        type=cli.int_at_least(0, MAX_SEED),
        default=None,
        help="seed of the fit sample, the fit and sample-mode draws (default 42)",
    )
    p.add_argument(
        "--n-components",
        type=cli.int_at_least(1, MAX_COMPONENTS),
        default=None,
        help="mixture components per column (default 10; e.g. --n-components 10)",
    )
    p.add_argument(
        "--sample-size",
        type=cli.int_at_least(1),
        default=None,
        help="rows drawn from all files for the fit (default 100000; e.g. --sample-size 200000)",
    )
    p.add_argument(
        "--max-iter",
        type=cli.int_at_least(1),
        default=None,
        help="scikit-learn iterations for the fit (default 100; e.g. --max-iter 500)",
    )
    p.add_argument(
        "--special-values",
        type=_floats,
        default=None,
        help="values with their own component, decoded exactly (e.g. --special-values 0)",
    )
    p.add_argument(
        "--learn-rounding",
        action="store_true",
        default=None,
        help="learn decimals from the sample and round at decode (bit-exact cents)",
    )
    p.add_argument(
        "--model-in",
        default=None,
        help="use this model instead of fitting (e.g. --model-in model.json)",
    )
    p.add_argument(
        "--model-out",
        default=None,
        help="also save the fitted model here (e.g. --model-out model.json)",
    )
    p.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default=None,
        help="dtype of <col>_normalized (default float64; e.g. --dtype float32)",
    )
    p.add_argument(
        "--partition-size",
        default=None,
        help="rows (4M) or input bytes (256MiB) per output part: small files are grouped, "
        "larger row groups read in slices (default on the CPU: 2M rows and at most 48MiB; "
        "on a GPU: 1/32 of its memory; e.g. --partition-size 4M)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output directory once the new one is complete",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse the parts a killed run of the same job finished (same input and options)",
    )
    cli.add_verbosity(p)
    return p


def options_from_args(args):
    from gpu_vgm.plan import EncodeOptions

    return EncodeOptions(
        input=args.input,
        output=args.output,
        columns=args.columns,
        mode=args.mode,
        seed=args.seed,
        dtype=args.dtype,
        n_components=args.n_components,
        sample_size=args.sample_size,
        max_iter=args.max_iter,
        special_values=args.special_values,
        learn_rounding=args.learn_rounding,
        model_in=args.model_in,
        model_out=args.model_out,
        partition_size=args.partition_size,
        overwrite=args.overwrite,
        resume=args.resume,
    )


def _run(args):
    from gpu_vgm.cluster import dask_client_in_background
    from gpu_vgm.encode_job import encode_job
    from gpu_vgm.fitting import read_fit_sample
    from gpu_vgm.plan import plan_encode
    from gpu_vgm.progress import progress_factory

    t_start = time.perf_counter()
    opts = options_from_args(args)
    plan = plan_encode(opts)  # bad paths, columns, footers and models fail here, before a cluster
    if args.scheduler_address:
        # a joined cluster's workers (`dask cuda worker` for the GPU) need not match this
        # machine: --backend gpu is taken as said, auto means the CPU backend
        backend = "gpu" if args.backend == "gpu" else "cpu"
    else:
        backend = choose_backend(args.backend)
    plan.for_backend(backend)
    fitting = not (opts.model_in or opts.resume)
    # Fits run here, on this machine's cores: they start at once, while the cluster starts and
    # its workers load the encode kernel; a joined cluster's workers fit columns too.
    fit_threads = _fit_threads(backend, args.workers, plan, bool(args.scheduler_address))
    if fit_threads and fitting:
        heap.keep_freed_memory()
    with dask_client_in_background(
        backend,
        workers=args.workers,
        gpus=args.gpus,
        scheduler_address=args.scheduler_address,
        kernels_mode=(opts.mode or "argmax") if backend == "cpu" else None,
    ) as connect:
        t0 = time.perf_counter()
        sample = read_fit_sample(plan) if fitting else None
        log.debug("fit sample read in %.2f s while the cluster started", time.perf_counter() - t0)
        manifest = encode_job(
            connect,
            plan,
            backend=backend,
            progress=progress_factory(args.quiet),
            sample=sample,
            fit_threads=fit_threads,
            fit_on_cluster=bool(args.scheduler_address),
        )
    total = time.perf_counter() - t_start  # what the user waited: cluster start included
    ooc = sum(c["out_of_coverage"] for c in manifest["columns"].values())
    log.info(
        "encoded %d rows in %.1f s (%.2f M rows/s; fit %.1f s, encode %.1f s; %s backend, "
        "%d worker threads); %d rows out of coverage; output: %s",
        manifest["rows"],
        total,
        manifest["rows"] / max(total, 1e-9) / 1e6,
        manifest["timings"]["plan_and_fit"],
        manifest["timings"]["encode"],
        backend,
        manifest["workers"],
        ooc,
        opts.output,
    )
    return 0


def _fit_threads(backend, workers, plan, joined=False):
    """Threads of this process to fit in: one per column, up to the cores of the cluster
    ``run`` starts (``--workers``, by default every core this process may use; for a GPU
    cluster, whose workers hold a thread per GPU, or a joined one, every core here)."""
    from dask.system import CPU_COUNT

    cores = workers if workers and backend == "cpu" and not joined else CPU_COUNT
    return max(1, min(len(plan.columns), cores))


def main(argv=None):
    return cli.run_command(build_parser(), _run, argv)


def console_main():
    cli.run_main(main)


if __name__ == "__main__":
    console_main()
