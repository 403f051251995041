"""The one place that picks a backend: "cpu" (cpu_fallback, numba) or "gpu" (CuPy, cudf).

GPU modules are imported only inside the GPU branches, so ``import gpu_vgm`` never touches
cupy or cudf.
"""

import importlib.util
import logging
import os
import shutil
import subprocess

from gpu_vgm.errors import BackendUnavailableError

log = logging.getLogger("gpu_vgm")
BACKENDS = ("auto", "gpu", "cpu")


def is_device_array(array):
    return type(array).__module__.split(".")[0] == "cupy"


def kernels_for(array):
    """The kernel module (encode/decode) for an array: GPU kernels for CuPy arrays, else CPU."""
    if is_device_array(array):
        from gpu_vgm import kernels

        return kernels
    from cpu_fallback import kernels

    return kernels


def gpu_unavailable_reason():
    """None when a CUDA device is usable with CuPy, else why not (in words)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return "CUDA_VISIBLE_DEVICES hides every GPU"
    if importlib.util.find_spec("cupy") is None:
        return "cupy is not installed (pip install 'gpu_vgm[gpu-cu13]')"
    if shutil.which("nvidia-smi") is not None:
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
            if out.returncode != 0 or "GPU" not in out.stdout:
                return "nvidia-smi lists no GPU"
        except (OSError, subprocess.TimeoutExpired):
            return "nvidia-smi did not answer"
    # Ask CuPy in a child process: touching CUDA here would create a context on GPU 0 in the
    # client before the cluster starts (a RAPIDS pitfall).
    probe = "import cupy; n = cupy.cuda.runtime.getDeviceCount(); raise SystemExit(0 if n else 1)"
    try:
        res = subprocess.run([_python(), "-c", probe], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the CUDA probe failed ({exc})"
    if res.returncode != 0:
        lines = (res.stderr or "no device").strip().splitlines()
        return f"CuPy sees no usable GPU ({lines[-1] if lines else 'no device'})"
    return None


def cudf_available():
    return all(importlib.util.find_spec(m) is not None for m in ("cudf", "dask_cudf"))


def _python():
    import sys

    return sys.executable


def choose_backend(requested):
    """Resolve --backend auto|gpu|cpu to "gpu" or "cpu", logging why auto fell back."""
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {requested!r}")
    if requested == "cpu":
        return "cpu"
    reason = gpu_unavailable_reason()
    if reason is None:
        return "gpu"
    if requested == "gpu":
        raise BackendUnavailableError(f"--backend gpu: no usable GPU: {reason}")
    log.info("using the CPU backend: %s", reason)
    return "cpu"


def column_encoder(backend):
    """The per-column encode function Dask tasks call for this backend.

    GPU: the partition is read with pyarrow on the host, copied to the device, encoded by the
    CuPy kernels and copied back (the cudf read/write path is not written yet).
    """
    from gpu_vgm import tasks

    return gpu_column_encoder if backend == "gpu" else tasks.vgm_column_encoder


def gpu_column_encoder(model, x, row_offset):
    import cupy

    from gpu_vgm import kernels

    z, comp, n_out = model.encode(cupy.asarray(x), row_offset=row_offset, backend=kernels)
    return cupy.asnumpy(z), cupy.asnumpy(comp), n_out
