"""The original Scale-VGM approach, as the baseline (not part of gpu_vgm).

Dask + scikit-learn: fit a BayesianGaussianMixture on a sample from the first two files,
then ``map_partitions`` with ``predict`` (argmax component), z = (x - mean) / (4 std) clipped
to +-0.99, no inverse. The original's ``repartition(partition_size=...)`` is left out: on
current Dask it never finishes.

    python benchmarks/original_scalevgm.py INPUT_DIR OUTPUT_DIR [--workers 2]
"""

import argparse
import glob
import os
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from sklearn.mixture import BayesianGaussianMixture

COLUMN = "Amount"


def fit_like_original(input_dir, n_components=10, sample_fraction=0.05, seed=42):
    files = sorted(glob.glob(os.path.join(input_dir, "*.parquet")))[:2]
    x = np.concatenate([pq.read_table(f, columns=[COLUMN]).column(0).to_numpy() for f in files])
    rng = np.random.default_rng(seed)
    sample = x[rng.random(x.size) < sample_fraction][:100_000]
    bgmm = BayesianGaussianMixture(
        n_components=n_components,
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=0.001,
        max_iter=100,
        random_state=seed,
    )
    bgmm.fit(sample.reshape(-1, 1))
    return bgmm


def transform_partition(df, means, stds, predict):
    x = df[COLUMN].to_numpy(dtype=np.float64)
    comp = predict(x.reshape(-1, 1))
    z = np.clip((x - means[comp]) / (4 * stds[comp]), -0.99, 0.99)
    out = df.copy()
    out[f"{COLUMN}_normalized"] = z
    out[f"{COLUMN}_component"] = comp.astype(np.int16)
    return out


def encode_like_original(input_dir, output_dir, bgmm):
    import dask.dataframe as dd

    ddf = dd.read_parquet(input_dir)
    meta = ddf._meta.assign(
        **{
            f"{COLUMN}_normalized": pd.Series(dtype="float64"),
            f"{COLUMN}_component": pd.Series(dtype="int16"),
        }
    )
    means = bgmm.means_.reshape(-1)
    stds = np.sqrt(bgmm.covariances_.reshape(-1))
    out = ddf.map_partitions(transform_partition, means, stds, bgmm.predict, meta=meta)
    out.to_parquet(output_dir, write_index=False, compression="snappy")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    with (
        LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None) as c,
        Client(c),
    ):
        bgmm = fit_like_original(args.input)
        encode_like_original(args.input, args.output, bgmm)
    print(f"original approach: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
