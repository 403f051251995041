"""Start or join Dask: LocalCUDACluster (--gpus N), LocalCluster (--workers N) or an address.

Nothing here schedules work by hand; every port is bound to localhost unless the user joins a
cluster of their own with --scheduler-address.
"""

import concurrent.futures
import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile

import dask
from dask.system import CPU_COUNT  # the cores this process may use (affinity, cgroup quota)

from gpu_vgm import worker_setup
from gpu_vgm.errors import BackendUnavailableError

log = logging.getLogger("gpu_vgm")
LOCALHOST = "127.0.0.1"
# CPU cores per worker process. The encode releases the GIL (pyarrow's reader and writer, a
# nogil numba kernel, NumPy), so threads of one process encode as fast as processes do, and
# the process starts and loads the kernel once: on 2 cores, one process with 2 threads took
# 0.2-0.3 s less for the whole 100M-row job than two processes, in paired runs.
CORES_PER_WORKER_PROCESS = 4


def _dashboard_address():
    # The dashboard needs bokeh; without it distributed would warn on every start.
    return f"{LOCALHOST}:8787" if importlib.util.find_spec("bokeh") else None


def _worker_environ():
    """Dask's worker environment without MALLOC_TRIM_THRESHOLD_: setting it turns off glibc's
    adaptive mmap threshold, so every large NumPy temporary is mapped and unmapped again; that
    doubled scikit-learn's fit time in a worker (4.0 s -> 7.3 s on a 100k-row sample)."""
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return environ


@contextlib.contextmanager
def dask_client(backend="cpu", workers=None, gpus=None, scheduler_address=None, kernels_mode=None):
    """Yield a distributed.Client for the chosen backend; closes what it started."""
    with dask_client_in_background(
        backend, workers, gpus, scheduler_address, kernels_mode
    ) as connect:
        yield connect()


@contextlib.contextmanager
def dask_client_in_background(
    backend="cpu", workers=None, gpus=None, scheduler_address=None, kernels_mode=None
):
    """Start the cluster in a thread and yield ``connect()``, which waits for it and returns
    the client. Workers take about a second to start: the caller reads the fit sample
    meanwhile. Whatever was started is closed on exit, whether or not ``connect()`` was called.

    ``kernels_mode``: workers of a cluster started here load the CPU encode kernel for this
    mode ("argmax" or "sample") as they start (``gpu_vgm.worker_setup``).

    ``workers``: CPU cores (worker threads) of a local CPU cluster; see ``cpu_layout``.
    """
    from distributed import Client

    if scheduler_address:
        try:
            client = Client(scheduler_address, timeout="30s")
        except (OSError, ValueError) as exc:  # refused, timed out, or not an address
            raise BackendUnavailableError(
                f"--scheduler-address {scheduler_address}: cannot connect ({exc})"
            ) from None
        with client:
            log.info("joined the Dask cluster at %s", scheduler_address)
            yield lambda: client
        return
    local_dir = tempfile.mkdtemp(prefix="gpu_vgm-dask-")
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gpu_vgm-start")
    clients = []

    def connect():
        if not clients:  # the Client is made here, in the caller's thread (it keeps context)
            clients.append(Client(starting.result()))
            if _dashboard_address():
                log.info("Dask dashboard: %s", clients[0].dashboard_link)
        return clients[0]

    # Held for the cluster's life, so a worker restarted after a crash gets it too.
    config = {"distributed.nanny.pre-spawn-environ": _worker_environ()}
    with dask.config.set({**config, **worker_setup.config(kernels_mode)}):
        starting = pool.submit(_local_cluster, backend, workers, gpus, local_dir)
        pool.shutdown(wait=False)
        try:
            yield connect
        finally:
            for client in clients:
                client.close()
            # A start that failed cleaned up after itself; its error reached connect() if
            # anyone asked.
            with contextlib.suppress(Exception):
                starting.result().close()
            shutil.rmtree(local_dir, ignore_errors=True)


def _worker_log_level():
    """Workers log a failed task with its traceback; the client reports it in one line
    anyway, so their logs show only with --verbose."""
    return logging.ERROR if log.isEnabledFor(logging.DEBUG) else logging.CRITICAL


def cpu_layout(cores):
    """(worker processes, threads each) for ``cores`` CPU cores: the fewest processes of at
    most ``CORES_PER_WORKER_PROCESS`` threads that share the cores exactly (a prime count
    above it gets a process per core). Few threads per process keep each GIL lightly used and a
    killed process a partial loss (its nanny restarts it and Dask reruns its parts)."""
    fewest = -(-cores // CORES_PER_WORKER_PROCESS)
    processes = next(p for p in range(fewest, cores + 1) if cores % p == 0)
    return processes, cores // processes


def _local_cluster(backend, workers, gpus, local_dir):
    from distributed import LocalCluster

    if backend == "gpu":
        return _cuda_cluster(gpus or 1, local_dir)
    processes, threads = cpu_layout(workers or CPU_COUNT)
    return LocalCluster(
        n_workers=processes,
        threads_per_worker=threads,
        processes=True,
        host=LOCALHOST,
        dashboard_address=_dashboard_address(),
        local_directory=local_dir,
        silence_logs=_worker_log_level(),
        preload=[worker_setup.__name__],
    )


def _cuda_cluster(gpus, local_dir):
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the GPU backend needs dask-cuda ({exc}); pip install 'gpu_vgm[gpu-cu13]' "
            "or run with --backend cpu"
        ) from None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",")[:gpus] if visible else [str(i) for i in range(gpus)]
    options = {"preload": [worker_setup.__name__]}
    if importlib.util.find_spec("rmm"):
        # One allocator for cudf and CuPy: two pools would run the GPU out of memory.
        options.update(rmm_async=True, rmm_allocator_external_lib_list=["cupy"])
    if importlib.util.find_spec("cudf"):
        options.update(enable_cudf_spill=True)
    return LocalCUDACluster(
        CUDA_VISIBLE_DEVICES=",".join(devices),
        n_workers=len(devices),
        host=LOCALHOST,
        dashboard_address=_dashboard_address(),
        local_directory=local_dir,
        silence_logs=_worker_log_level(),
        **options,
    )
