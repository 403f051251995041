"""Checkpoints of an encode job, so that ``--resume`` can reuse the parts a killed run finished.

While a job runs, its temporary directory (``OUTPUT.tmp-<pid>-<hex>``) holds ``_model.json`` and
``_checkpoint.jsonl``: a header line with the fingerprint of everything the output depends on
(the input files' sizes, times and footers, the columns, parts and options, and the model's
hash), then one line per part written, appended as each finishes (a torn last line is
ignored). A run that is killed leaves that directory behind (never anything at OUTPUT); a later
run with ``--resume`` adopts it when the fingerprint matches, its model is the one the header
names, and its run is over; it submits only the missing parts. The result is identical to a
clean run because every part is a pure function of (input, model, options, part index).
"""

import hashlib
import json
import logging
import os
import secrets
from pathlib import Path

from gpu_vgm import storage

log = logging.getLogger("gpu_vgm")
CHECKPOINT = "_checkpoint.jsonl"
FORMAT = "gpu_vgm.checkpoint"
MODEL = "_model.json"
_FIT_OPTIONS = (
    "mode",
    "seed",
    "dtype",
    "n_components",
    "sample_size",
    "eps",
    "max_iter",
    "learn_rounding",
)


def fingerprint(opts, files, columns, units, backend="cpu"):
    """Everything an encode's output depends on, as JSON-able data."""
    from gpu_vgm import __version__

    model_hash = None
    if opts.model_in:
        model_hash = hashlib.sha256(storage.read_bytes(opts.model_in)).hexdigest()
    return {
        "input": [
            [f.path, f.num_rows, list(f.row_group_rows), f.size, f.modified, f.footer_sha256]
            for f in files
        ],
        "columns": list(columns),
        "parts": [
            [[s.path, s.row_group, s.start, s.rows] for s in part.segments]
            for unit in units
            for part in unit.parts
        ],
        "options": {k: getattr(opts, k) for k in _FIT_OPTIONS}
        | {"special_values": list(opts.special_values or ())},
        "model_in": model_hash,
        "gpu_vgm": __version__,
        "backend": backend,
    }


def _process_start(pid):
    """A process's start time in clock ticks since boot (Linux), or None: with the pid it
    names one process, where a pid alone may have been reused."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(header):
    """Whether the run that wrote ``header`` may still be running."""
    pid = header.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        # Not us (our token is new): a container's run is always PID 1, so a killed run's
        # leftover has the rerun's own pid.
        return header.get("token") == RUN_TOKEN
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = header.get("started")
    return started is None or _process_start(pid) in (None, started)


RUN_TOKEN = secrets.token_hex(8)  # this process's runs, told apart from a reused pid's


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
    done = {
        r["index"]: r
        for r in records[1:]
        if isinstance(r, dict)
        and isinstance(r.get("index"), int)
        and isinstance(r.get("file"), str)
    }
    return records[0], done


def model_sha256(directory):
    try:
        return hashlib.sha256((Path(directory) / MODEL).read_bytes()).hexdigest()
    except OSError:
        return None


def unfinished_runs(output, fp):
    """[(directory, finished part results)] left by dead runs of this very job, most done first."""
    output = Path(output)
    found = []
    for d in output.parent.glob(f"{output.name}.tmp-*"):
        header, done = _read(d / CHECKPOINT)
        if header is None or header.get("fingerprint") != fp or _alive(header):
            continue
        if header.get("model_sha256") != model_sha256(d):
            continue  # the model beside the parts is not the one they were encoded with
        done = {i: r for i, r in done.items() if (d / r["file"]).is_file()}
        found.append((d, done))
    return sorted(found, key=lambda item: -len(item[1]))


class Checkpoint:
    """Appends each finished part to the checkpoint file as it arrives."""

    def __init__(self, directory, fp, done=None):
        self.path = Path(directory) / CHECKPOINT
        header = {
            "format": FORMAT,
            "pid": os.getpid(),
            "token": RUN_TOKEN,
            "started": _process_start(os.getpid()),
            "model_sha256": model_sha256(directory),
            "fingerprint": fp,
        }
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
