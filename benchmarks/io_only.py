"""The I/O ceiling (benchmarks only): gpu_vgm's own partition pipeline (read, attach, write)
with the encoding replaced by x / 3 and zero components.

    python benchmarks/io_only.py INPUT OUTPUT WORKERS MODEL

runs it as a whole job, timed as a user times ``run``: a fresh process that starts a cluster,
plans, reads every part and writes the same output schema (``MODEL``, a model file of the
input's columns, gives it), without sample, fit or encoding, then deletes the output. This
module imports only what that needs, so the process starts no slower than ``run``.
"""

import shutil
import sys

import numpy as np

from gpu_vgm.backends import ArrowCPU


class IOOnlyKernels:
    """Same output schema, no encoding. x / 3 stands in for the normalized column: doubles
    with full mantissas, as incompressible as real normalized values, so the writer does the
    same work for them (the input values themselves would compress, and slower); all-zero
    components are the cheapest possible component column."""

    @staticmethod
    def encode(x, params, mode, key, row_offset, out_dtype=np.float64):
        z = (np.asarray(x, np.float64) * (1.0 / 3.0)).astype(out_dtype, copy=False)
        return z, np.zeros(z.size, np.int16), 0, 0


class IOOnly(ArrowCPU):
    """ArrowCPU with IOOnlyKernels."""

    @property
    def kernels(self):
        return IOOnlyKernels


def command(inp, out, workers, model):
    """The whole-job I/O ceiling's command line."""
    return [sys.executable, __file__, str(inp), str(out), str(workers), str(model)]


def main(argv):
    from gpu_vgm.cluster import dask_client
    from gpu_vgm.encode_job import encode_job
    from gpu_vgm.plan import EncodeOptions, plan_encode

    inp, out, workers, model = argv
    plan = plan_encode(EncodeOptions(input=inp, output=out, model_in=model))
    with dask_client("cpu", workers=int(workers)) as client:
        encode_job(client, plan, backend=IOOnly())
    shutil.rmtree(out)


if __name__ == "__main__":
    main(sys.argv[1:])
