"""The decode job: restore the original columns, names, types and row order of an encoded
directory (``python -m gpu_vgm.inverse``)."""

import time

from gpu_vgm import inputs, manifest, schema, storage, tasks
from gpu_vgm.errors import InputError
from gpu_vgm.modelfile import models_from_data, read_json, stored_fingerprint
from gpu_vgm.progress import gather_parts

MODEL = "_model.json"


def decode_job(client, input_dir, output, model_path=None, overwrite=False, progress=None):
    """Decode every part listed in ``input_dir``'s manifest into ``output`` (atomically)."""
    t0 = time.perf_counter()
    storage.check_apart(output, [input_dir])
    if model_path:  # --overwrite would delete it before it is read
        storage.check_apart(model_path, [output], "--model", inside="refused")
    storage.check_output(output, overwrite)
    fs, root = inputs.open_fs(input_dir)
    if not fs.isdir(root):
        raise InputError(f"{input_dir}: no such directory")
    found = manifest.read_manifest(input_dir)
    model_file = model_path or f"{input_dir}/{MODEL}"
    model_data = read_json(model_file)  # read once: for the models and for their fingerprint
    models = models_from_data(model_data, model_file)
    columns = list(found["columns"])
    missing = [c for c in columns if c not in models]
    if missing:
        raise InputError(f"{model_path or MODEL}: no model for column {missing[0]!r}")
    models = {c: models[c] for c in columns}
    expected = found.get("model_sha256")  # absent in outputs written before it was added
    if expected and stored_fingerprint(model_data, columns) != expected:
        hint = f"use {input_dir}/{MODEL}" if model_path else "it was changed after encoding"
        raise InputError(
            f"{model_file}: not the model {input_dir} was encoded with (its SHA-256 differs "
            f"from the manifest's); {hint}"
        )
    fields = {c: schema.field_from_manifest(c, found["columns"][c]) for c in columns}
    parts = found["parts"]
    for part in parts:
        if not fs.isfile(f"{root}/{part['file']}"):
            raise InputError(f"{input_dir}: {part['file']} is listed in the manifest but missing")
    with storage.output_directory(output, overwrite) as tmp:
        shared = client.submit(tasks.hold, models, pure=False)
        futures = [
            client.submit(
                _decode_one,
                fs,
                f"{root}/{part['file']}",
                i,
                shared,
                fields,
                str(tmp),
                part.get("footer_sha256"),
                pure=False,
            )
            for i, part in enumerate(parts)
        ]
        results = gather_parts(client, futures, len(futures), progress, "decoding")
        rows = sum(r["rows"] for r in results)
        if rows != found["rows"]:
            raise InputError(f"{input_dir}: decoded {rows} rows, the manifest says {found['rows']}")
        manifest.write(
            tmp,
            {
                "format": "gpu_vgm.decoded",
                "version": 1,
                "source": str(input_dir),
                "rows": rows,
                "columns": columns,
                "versions": manifest.versions(),
            },
        )
    return {"rows": rows, "parts": len(parts), "seconds": time.perf_counter() - t0}


def _decode_one(*args):
    return [tasks.decode_part(*args)]
