"""Preload module for the workers of the clusters gpu_vgm starts (distributed's ``preload``).

A worker's first partition would load pandas (pyarrow imports it on its first ``to_numpy``,
0.25 s) and the compiled encode kernel from numba's cache (0.3-0.8 s); that happens here in
a thread as the worker starts, while the client reads the fit sample. On close, the garbage
collector is frozen, so the exiting process skips a final collection over every module it
loaded (0.3-0.4 s per worker once scikit-learn is in, waited for by every run).
"""

import gc
import threading

import dask

# The nanny hands the client's dask config to the worker processes it starts.
KERNELS_KEY = "gpu_vgm.warm-up-kernels"


def config(kernels_mode=None):
    """Dask config to hold while the cluster starts: warm the CPU encode kernel for
    ``kernels_mode`` ("argmax" or "sample"; None: no warm-up) on every worker."""
    return {KERNELS_KEY: kernels_mode}


def dask_setup(worker):
    mode = dask.config.get(KERNELS_KEY, None)
    if mode:
        threading.Thread(target=_warm_up, args=(mode,), name="gpu_vgm-warm-up", daemon=True).start()


def _warm_up(mode):
    import pyarrow as pa

    from cpu_fallback import kernels
    from gpu_vgm import schema

    schema.to_float64(pa.array([0.0]), "warm-up", "warm-up")
    kernels.warm_up(mode)


def dask_teardown(worker):
    gc.freeze()
