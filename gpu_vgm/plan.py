"""An encode job's options and plan: every check of the input, the output place and a
``--model-in`` happens here, once, before any cluster starts; the job receives the plan.

``plan_encode(opts)`` reads footers only (no data pages): files, columns, their types, the
output parts and the units tasks read them in.
"""

import logging
from dataclasses import dataclass, field

from gpu_vgm import inputs, schema, storage
from gpu_vgm.errors import InputError
from gpu_vgm.modelfile import load_models

log = logging.getLogger("gpu_vgm")
# Parts of 2M rows, and of at most 48 MiB of input in memory: with the encoded columns and the
# writer's buffers a few hundred MB per worker thread, and a wide table still splits into
# enough parts to keep every core busy.
CPU_PARTITION = [("rows", 2_000_000), ("bytes", 48 << 20)]

# Fit options and their defaults; None in EncodeOptions means "not given" (so that --model-in
# can refuse the ones that would have no effect).
FIT_DEFAULTS = {
    "n_components": 10,
    "sample_size": 100_000,
    "max_iter": 100,
    "special_values": (),
    "learn_rounding": False,
}
_FIT_FLAGS = {
    "n_components": "--n-components",
    "sample_size": "--sample-size",
    "max_iter": "--max-iter",
    "special_values": "--special-values",
    "learn_rounding": "--learn-rounding",
}


@dataclass
class EncodeOptions:
    input: str
    output: str
    columns: list = field(default_factory=list)
    mode: str | None = None  # None: "argmax", or the loaded model's
    seed: int | None = None  # None: 42, or the loaded model's
    dtype: str | None = None  # None: "float64", or the loaded model's
    n_components: int | None = None  # fit options: None gives FIT_DEFAULTS
    sample_size: int | None = None
    eps: float = 0.005
    max_iter: int | None = None
    special_values: tuple | None = None
    learn_rounding: bool | None = None
    model_in: str | None = None
    model_out: str | None = None
    partition_size: str | None = None  # None: 2M rows on the CPU, device memory / 32 on a GPU
    overwrite: bool = False
    resume: bool = False  # adopt the finished parts of a killed run of the same job

    def fit_option(self, name):
        value = getattr(self, name)
        return FIT_DEFAULTS[name] if value is None else value

    @property
    def fit_seed(self):
        return 42 if self.seed is None else self.seed


@dataclass
class EncodePlan:
    opts: EncodeOptions
    fs: object
    files: list
    columns: list
    units: list
    models_in: dict | None = None  # the --model-in models, checked

    def for_backend(self, backend):
        """Re-plan the parts for the GPU when the user gave no --partition-size: a part then
        holds 1/32 of the smallest GPU's memory (as dask-cudf's default blocksize), not 2M
        rows, so each kernel launch and cudf read has enough rows to fill the device."""
        if backend == "gpu" and self.opts.partition_size is None:
            size = ("bytes", gpu_partition_bytes())
            self.units = inputs.plan_units(self.files, size)
            log.info("GPU parts of up to %d MiB of input", size[1] >> 20)
        return self

    @property
    def parts(self):
        return inputs.parts_of(self.units)

    @property
    def schema(self):
        return self.files[0].schema

    @property
    def types(self):
        """Each encoded column's Arrow type in the input."""
        return {c: self.schema.field(c).type for c in self.columns}

    @property
    def total_rows(self):
        return sum(f.num_rows for f in self.files)


def plan_encode(opts):
    """Check everything and plan the job (InputError or OutputError, one line, otherwise)."""
    storage.check_apart(opts.output, [opts.input])  # before "exists": --overwrite won't help
    storage.check_output(opts.output, opts.overwrite)
    if opts.model_in:
        given = [flag for name, flag in _FIT_FLAGS.items() if getattr(opts, name) is not None]
        if given:
            raise InputError(
                f"{given[0]} has no effect with --model-in (the model is fitted already); "
                "leave it out, or fit a new model without --model-in"
            )
    fs, paths = inputs.list_parquet_files(opts.input)
    files = inputs.read_metadata(fs, paths)
    inputs.check_same_schema(files)
    columns = inputs.select_columns(files, opts.columns)
    for f in files:
        schema.check_no_clash(f.schema, columns, f.path)
    size = inputs.parse_size(opts.partition_size) if opts.partition_size else CPU_PARTITION
    units = inputs.plan_units(files, size)
    check_apart_from_input(opts, fs, files)
    plan = EncodePlan(opts, fs, files, columns, units)
    if opts.model_in:
        plan.models_in = load_for_encode(opts, columns)
    return plan


def check_apart_from_input(opts, fs, files):
    """OutputError where ``--output`` or ``--model-out`` would overwrite or mix with the input
    (the folders of a glob's files count as the input)."""
    places = [opts.input]
    if any(ch in str(opts.input) for ch in "*?["):
        places += sorted({fs.unstrip_protocol(f.path.rsplit("/", 1)[0]) for f in files})
    storage.check_apart(opts.output, places)
    if opts.model_out:
        storage.check_output_file(opts.model_out, opts.overwrite, "--model-out")
        # A JSON file next to the input is never read as input; inside the output it would be
        # replaced with it.
        storage.check_apart(opts.model_out, places, "--model-out", inside="json")
        storage.check_apart(opts.model_out, [opts.output], "--model-out", inside="refused")
    if opts.model_in:  # --overwrite would delete it before it is read
        storage.check_apart(opts.model_in, [opts.output], "--model-in", inside="refused")


def load_for_encode(opts, columns, path=None):
    """The models of ``columns`` from a model file (``--model-in``, or ``path``), with the
    job's mode, dtype and seed where given."""
    path = path or opts.model_in
    models = load_models(path)
    missing = [c for c in columns if c not in models]
    if missing:
        raise InputError(f"{path}: no model for column {missing[0]!r}")
    chosen = {}
    for c in columns:
        m = models[c]
        if opts.mode is not None:
            m.mode = opts.mode
        if opts.dtype is not None:
            m.dtype = opts.dtype
        if opts.seed is not None and opts.seed != m.random_state:
            m.random_state = opts.seed
            m._build_kernel_params()  # the sample-mode key depends on the seed
        chosen[c] = m
    return chosen


def gpu_partition_bytes():
    """1/32 of the smallest visible GPU's memory (nvidia-smi: touching CUDA here would make a
    context in this process before the cluster starts); 1 GiB when it cannot tell."""
    import os
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        sizes = [int(v) for v in out.stdout.split()]
    except (OSError, ValueError, subprocess.TimeoutExpired):
        sizes = []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible and sizes:
        chosen = [int(i) for i in visible.split(",") if i.strip().isdigit() and int(i) < len(sizes)]
        sizes = [sizes[i] for i in chosen] or sizes
    return (min(sizes) << 20) // 32 if sizes else 1 << 30
