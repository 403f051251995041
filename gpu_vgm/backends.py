"""The one place that picks a backend, and the backends the partition pipeline runs on.

``gpu_vgm.partition`` reads, encodes, attaches and writes each part once, against this small
interface; a backend supplies the table type, the array module and the kernels:

- ``cpu``: pyarrow tables, NumPy arrays, ``cpu_fallback``'s numba kernels;
- ``gpu``: cudf DataFrames read and written on the device, the CuPy kernels
  (``gpu_vgm.gpu_frames``); values never pass through host memory;
- ``gpu`` without cudf: pyarrow tables on the host, each column copied to the device for the
  CuPy kernels and back;
- ``pandas``: pandas DataFrames and the numba kernels (``VGMEncoder`` on pandas-backed Dask
  DataFrames).

GPU modules are imported only inside the GPU classes' methods, so ``import gpu_vgm`` never
touches cupy or cudf.
"""

import importlib.util
import logging
import os
import shutil
import subprocess
import sys

import numpy as np

from gpu_vgm import schema, storage
from gpu_vgm.errors import BackendUnavailableError

log = logging.getLogger("gpu_vgm")
BACKENDS = ("auto", "gpu", "cpu")


class ArrowCPU:
    """pyarrow tables on the host, NumPy arrays and the numba kernels."""

    name = "cpu"
    io = "pyarrow"

    @property
    def xp(self):
        return np

    @property
    def kernels(self):
        from cpu_fallback import kernels

        return kernels

    def read_unit(self, fs, unit, target_schema):
        """(part, table) for each part of ``unit``, in order (``gpu_vgm.readers``)."""
        from gpu_vgm import readers

        return readers.read_unit(fs, unit, target_schema)

    def num_rows(self, frame):
        return frame.num_rows

    def column(self, frame, name, source):
        """(float64 values with NaN where null, null mask or None) of a numeric column."""
        values = frame.column(name)
        return schema.to_float64(values, name, source), schema.null_mask(values)

    def attach(self, frame, name, z, component):
        return schema.append_encoded(frame, name, self.to_host(z), self.to_host(component))

    def write(self, frame, path, plain_columns=()):
        from gpu_vgm import readers

        readers.write_part(frame, path, plain_columns)

    def to_host(self, array):
        return array


class _OnDevice:
    """The GPU backends' arrays: CuPy, the CuPy kernels, copies back to the host."""

    name = "gpu"

    @property
    def xp(self):
        import cupy

        return cupy

    @property
    def kernels(self):
        from gpu_vgm import kernels

        return kernels

    def to_host(self, array):
        import cupy

        return cupy.asnumpy(array)


class ArrowGPU(_OnDevice, ArrowCPU):
    """The GPU backend where cudf is missing: host I/O, each column copied to the device."""

    def column(self, frame, name, source):
        import cupy

        x, nulls = super().column(frame, name, source)
        return cupy.asarray(x), None if nulls is None else cupy.asarray(nulls)


class CudfGPU(_OnDevice):
    """cudf DataFrames on the device: read, convert, attach and write never leave it."""

    io = "cudf"

    def read_unit(self, fs, unit, target_schema):
        from gpu_vgm import gpu_frames

        return gpu_frames.read_unit(fs, unit, target_schema)

    def num_rows(self, frame):
        return len(frame)

    def column(self, frame, name, source):
        from gpu_vgm import gpu_frames

        return gpu_frames.column(frame, name, source)

    def attach(self, frame, name, z, component):
        from gpu_vgm import gpu_frames

        return gpu_frames.attach(frame, name, z, component)

    def write(self, frame, path, plain_columns=()):
        from gpu_vgm import gpu_frames

        gpu_frames.write(frame, path, plain_columns)


class PandasCPU(ArrowCPU):
    """pandas DataFrames (``VGMEncoder`` on pandas-backed Dask DataFrames), numba kernels."""

    io = "pandas"

    def num_rows(self, frame):
        return len(frame)

    def column(self, frame, name, source):
        return super().column(schema.table_from_pandas(frame, [name]), name, source)

    def attach(self, frame, name, z, component):
        return frame.assign(
            **{schema.normalized_name(name): z, schema.component_name(name): component}
        )


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
        res = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the CUDA probe failed ({exc})"
    if res.returncode != 0:
        lines = (res.stderr or "no device").strip().splitlines()
        return f"CuPy sees no usable GPU ({lines[-1] if lines else 'no device'})"
    return None


def cudf_available():
    return all(importlib.util.find_spec(m) is not None for m in ("cudf", "dask_cudf"))


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


def make(name, plan=None):
    """The backend object for "cpu" or "gpu" (``choose_backend``'s answer) and a job's plan.

    On the GPU, cudf reads and writes on the device; parts go through host memory instead
    where cudf is missing, where the input or output is an object store, or where a column's
    type would not come back from cudf's writer as pyarrow writes it. The log says which.
    """
    if name == "cpu":
        return ArrowCPU()
    why = _why_host_io(plan)
    if why:
        log.info("GPU backend: parts are read and written on the host: %s", why)
        return ArrowGPU()
    log.info("GPU backend: cudf reads and writes the parts on the device")
    return CudfGPU()


def _why_host_io(plan):
    if not cudf_available():
        return "cudf is missing (pip install 'gpu_vgm[gpu-cu13]')"
    if plan is None:
        return None
    for place in (plan.opts.input, plan.opts.output):
        if storage.is_remote(place):
            return f"{place} is an object store"
    from gpu_vgm import gpu_frames

    return gpu_frames.unsupported(plan.schema)
