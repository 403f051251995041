"""Checkpoints of an encode job, so that ``--resume`` can reuse the parts a killed run finished.

While a job runs, its temporary directory (``OUTPUT.tmp-<pid>-<hex>``) holds ``_model.json`` and
``_checkpoint.jsonl``: a header line with the fingerprint of everything the output depends on,
then one line per part written, appended as each finishes (a torn last line is ignored).
A run that is killed leaves that directory behind (never anything at OUTPUT); a later
run with ``--resume`` adopts it when the fingerprint matches and its process is gone, loads the
model from it, and submits only the missing parts. The result is identical to a clean run
because every part is a pure function of (input, model, options, part index).
"""

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger("gpu_vgm")
CHECKPOINT = "_checkpoint.jsonl"
FORMAT = "gpu_vgm.checkpoint"


def fingerprint(opts, files, columns, parts):
    """Everything an encode's output depends on, as JSON-able data."""
    model_hash = None
    if opts.model_in:
        model_hash = hashlib.sha256(Path(opts.model_in).read_bytes()).hexdigest()
    return {
        "input": [[f.path, f.num_rows, list(f.row_group_rows)] for f in files],
        "columns": list(columns),
        "parts": [[p.path, list(p.row_groups)] for p in parts],
        "options": {
            k: getattr(opts, k)
            for k in (
                "mode",
                "seed",
                "dtype",
                "n_components",
                "sample_size",
                "eps",
                "max_iter",
                "learn_rounding",
            )
        }
        | {"special_values": list(opts.special_values)},
        "model_in": model_hash,
    }


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path):
    """(header, {index: result}) of a checkpoint file, or (None, {}) when unreadable."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None, {}
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            break  # the line being written when the run was killed
    if not records or not isinstance(records[0], dict) or records[0].get("format") != FORMAT:
        return None, {}
    done = {r["index"]: r for r in records[1:] if isinstance(r, dict) and "index" in r}
    return records[0], done


def unfinished_runs(output, fp):
    """[(directory, finished part results)] left by dead runs of this very job, most done first."""
    output = Path(output)
    found = []
    for d in output.parent.glob(f"{output.name}.tmp-*"):
        header, done = _read(d / CHECKPOINT)
        if header is None or header.get("fingerprint") != fp or _alive(header.get("pid", -1)):
            continue
        done = {i: r for i, r in done.items() if (d / r["file"]).is_file()}
        found.append((d, done))
    return sorted(found, key=lambda item: -len(item[1]))


class Checkpoint:
    """Appends each finished part to the checkpoint file as it arrives."""

    def __init__(self, directory, fp, done=None):
        self.path = Path(directory) / CHECKPOINT
        header = {"format": FORMAT, "pid": os.getpid(), "fingerprint": fp}
        with open(self.path, "w", encoding="utf-8") as f:  # a new header: this process owns it
            for line in [header, *(done or {}).values()]:
                f.write(json.dumps(line) + "\n")
        self._file = open(self.path, "a", encoding="utf-8")

    def add(self, result):
        self._file.write(json.dumps(result) + "\n")
        self._file.flush()

    def remove(self):
        self._file.close()
        self.path.unlink(missing_ok=True)
