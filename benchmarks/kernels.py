"""Kernel benchmark (not a test): cpu_fallback encode/decode vs scikit-learn, one thread.

    python benchmarks/kernels.py --rows 10000000 [--json OUT.json]

Prints rows/s for cpu_fallback encode (argmax, sample) and decode next to scikit-learn's
predict_proba and predict on the same rows, in the same run, and their ratios.
"""

import argparse
import json
import os
import platform
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from threadpoolctl import threadpool_limits

from cpu_fallback import kernels
from gpu_vgm import ScaleVGM
from gpu_vgm.generate import synthetic_amounts


def best_rate(fn, rows, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return rows / min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument(
        "--sklearn-rows",
        type=int,
        default=1_000_000,
        help="rows for the (slow) scikit-learn reference (default 1M)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    blocks = range((args.rows + 65535) // 65536)
    x = np.concatenate([synthetic_amounts(1, args.rows, b, args.rows // 2) for b in blocks])
    model = ScaleVGM(n_components=10).fit(
        x[:: max(1, args.rows // 200_000)], value_range=(x.min(), x.max())
    )
    params, key = model.kernel_params_, model.column_key_
    z, comp, _, _ = kernels.encode(x, params, "argmax", key, 0)  # compile
    kernels.encode(x[:1000], params, "sample", key, 0)
    kernels.decode(z[:1000], comp[:1000], params)
    xs = x[: args.sklearn_rows].reshape(-1, 1)
    with threadpool_limits(1):
        results = {
            "sklearn_predict_proba": best_rate(
                lambda: model.bgmm.predict_proba(xs), len(xs), args.repeat
            ),
            "sklearn_predict": best_rate(lambda: model.bgmm.predict(xs), len(xs), args.repeat),
            "encode_argmax": best_rate(
                lambda: kernels.encode(x, params, "argmax", key, 0), len(x), args.repeat
            ),
            "encode_sample": best_rate(
                lambda: kernels.encode(x, params, "sample", key, 0), len(x), args.repeat
            ),
            "decode": best_rate(lambda: kernels.decode(z, comp, params), len(x), args.repeat),
        }
    base = results["sklearn_predict_proba"]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        "one thread; "
        f"{args.rows:,} rows, {int(params.ids.size)} active components"
    )
    for name, rate in results.items():
        print(
            f"  {name:22s} {rate / 1e6:9.2f} M rows/s   {rate / base:8.1f} x sklearn predict_proba"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "rows": args.rows,
                    "rows_per_s": results,
                    "vs_sklearn_predict_proba": {k: v / base for k, v in results.items()},
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
