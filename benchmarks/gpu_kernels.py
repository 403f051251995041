"""GPU kernel benchmark (not a test): gpu_vgm.kernels encode/decode against a plain device copy.

    python benchmarks/gpu_kernels.py [--rows 100000000] [--components 10] [--json OUT.json]

Generates N float64 rows on the device from a 10-component mixture, fits ScaleVGM on a host
sample, then times (cupy.cuda.Event, warmup, best of --repeat) encode argmax, encode sample,
decode, and the bandwidth reference: a device copy moving the same bytes per row as the
kernels (x.copy() reads 8 B and writes 8 B, plus a 2 B fill standing for the component), so
18 B per row. Each result is reported as rows/s, GB/s at 18 B/row, and as the fraction of the
copy's effective GB/s. Needs an NVIDIA GPU with CuPy.
"""

import argparse
import json
import platform
import sys
import warnings

import numpy as np

try:
    import cupy
except ImportError:
    sys.exit("benchmarks/gpu_kernels.py needs CuPy and an NVIDIA GPU (pip install cupy-cuda13x)")

from cpu_fallback import kernels as cpu_kernels
from gpu_vgm import ScaleVGM
from gpu_vgm import kernels as gpu_kernels

BYTES_PER_ROW = 8 + 8 + 2  # read x (or z + component for decode), write z and component (or x)


def mixture_on_device(rows, components, seed):
    """Float64 rows from `components` well-separated normals (means 10 * 2**k, sd 15%), each
    clipped at 3.5 sd so that the fitted components cover every row."""
    rng = cupy.random.default_rng(seed)
    means = cupy.asarray(10.0 * 2.0 ** np.arange(components))
    which = rng.integers(0, components, size=rows)
    noise = cupy.clip(rng.standard_normal(rows), -3.5, 3.5)
    x = means[which] * (1.0 + 0.15 * noise)
    del which, noise
    return x


def best_ms(fn, repeat, warmup):
    """Best wall time in ms of `fn()` over `repeat` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    cupy.cuda.Device().synchronize()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(repeat):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000_000)
    parser.add_argument("--components", type=int, default=10)
    parser.add_argument("--sample-rows", type=int, default=100_000, help="rows for the fit")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--check-rows",
        type=int,
        default=1_000_000,
        help="rows checked against cpu_fallback before timing (0: none)",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    props = cupy.cuda.runtime.getDeviceProperties(0)
    device = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    n = args.rows
    x = mixture_on_device(n, args.components, args.seed)
    step = max(1, n // args.sample_rows)
    sample = cupy.asnumpy(x[::step][: args.sample_rows])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a ConvergenceWarning does not matter for timing
        model = ScaleVGM(n_components=args.components, random_state=args.seed)
        model.fit(sample, value_range=(float(x.min()), float(x.max())))
    params, key = model.kernel_params_, model.column_key_

    z, comp, n_ooc, _ = gpu_kernels.encode(x, params, "argmax", key, 0)
    if args.check_rows:
        xs = cupy.asnumpy(x[: args.check_rows])
        for mode in ("argmax", "sample"):
            g = gpu_kernels.encode(x[: args.check_rows], params, mode, key, 0)
            c = cpu_kernels.encode(xs, params, mode, key, 0)
            same_z = np.array_equal(cupy.asnumpy(g[0]).view(np.int64), c[0].view(np.int64))
            if not (same_z and np.array_equal(cupy.asnumpy(g[1]), c[1]) and g[2:] == c[2:]):
                sys.exit(f"check failed: GPU {mode} encode differs from cpu_fallback (bits)")

    def copy_reference():
        x.copy()
        cupy.empty(n, dtype=cupy.int16).fill(0)

    timed = {
        "copy_reference": copy_reference,
        "encode_argmax": lambda: gpu_kernels.encode(x, params, "argmax", key, 0),
        "encode_sample": lambda: gpu_kernels.encode(x, params, "sample", key, 0),
        "decode": lambda: gpu_kernels.decode(z, comp, params),
    }
    ms = {name: best_ms(fn, args.repeat, args.warmup) for name, fn in timed.items()}
    copy_gbs = BYTES_PER_ROW * n / (ms["copy_reference"] * 1e-3) / 1e9
    results = {}
    for name, t in ms.items():
        gbs = BYTES_PER_ROW * n / (t * 1e-3) / 1e9
        results[name] = {
            "ms": t,
            "rows_per_s": n / (t * 1e-3),
            "gb_per_s": gbs,
            "fraction_of_copy": gbs / copy_gbs,
        }

    print(
        f"device: {device}; {n:,} float64 rows; {int(params.m.size)} active components "
        f"({model.n_mixture_} fitted); {n_ooc} out of coverage; best of {args.repeat}"
    )
    for name, r in results.items():
        print(
            f"  {name:15s} {r['ms']:9.3f} ms  {r['rows_per_s'] / 1e9:7.3f} G rows/s  "
            f"{r['gb_per_s']:8.1f} GB/s  {r['fraction_of_copy']:6.1%} of copy"
        )
    if args.json:
        report = {
            "device": device,
            "host": platform.node(),
            "cupy": cupy.__version__,
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "rows": n,
            "dtype": "float64",
            "components_fitted": int(model.n_mixture_),
            "components_active": int(params.m.size),
            "out_of_coverage": n_ooc,
            "bytes_per_row": BYTES_PER_ROW,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "timing": "cupy.cuda.Event, best of repeat, after warmup",
            "results": results,
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
