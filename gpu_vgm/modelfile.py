"""Model files: a fitted ScaleVGM per column, as versioned JSON (``_model.json``, or
``--model-out``), validated field by field on load; never pickle.

A file holds either one ScaleVGM (``format: gpu_vgm.ScaleVGM``, ``ScaleVGM.save``) or a set of
columns (``format: gpu_vgm.model``). The SHA-256 of the models' entries ties an encoded
directory to its model.
"""

import hashlib
import json

from gpu_vgm import storage
from gpu_vgm.model import ScaleVGM
from gpu_vgm.model_schema import FORMAT, check_header, require

SET_FORMAT = "gpu_vgm.model"
SET_VERSION = 1


def save_models(path, models, extra=None):
    """Write a set of fitted ScaleVGM (one per column, in order) as one JSON file."""
    data = {"format": SET_FORMAT, "version": SET_VERSION, "columns": [m.to_dict() for m in models]}
    if extra:
        data["info"] = extra
    storage.write_json(path, data)


def fingerprint(models):
    """SHA-256 of the models' entries as a model file stores them (canonical JSON): ties an
    encoded directory to its model."""
    return _digest([m.to_dict() for m in models])


def stored_fingerprint(data, columns):
    """``fingerprint`` of the given columns' entries exactly as a model file's ``data`` holds
    them (so that a later gpu_vgm, which may write more keys, still recognises today's files)."""
    if isinstance(data, dict) and data.get("format") == FORMAT:
        entries = [data]
    else:
        entries = data["columns"]  # models_from_data has validated it
    by_column = {e["params"]["column"]: e for e in entries}
    return _digest([by_column[c] for c in columns])


def _digest(entries):
    text = json.dumps(_numbers_as_floats(entries), sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _numbers_as_floats(value):
    """1 and 1.0 alike: a JSON tool that re-saves the file may write either."""
    if isinstance(value, dict):
        return {k: _numbers_as_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_numbers_as_floats(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def load_models(path):
    """Read a model file (a set or a single ScaleVGM) -> {column: ScaleVGM} in file order."""
    return models_from_data(read_json(path), str(path))


def models_from_data(data, source):
    """``load_models`` of a model file's parsed JSON (``source``: its name, for errors)."""
    source = str(source)
    if isinstance(data, dict) and data.get("format") == FORMAT:
        model = ScaleVGM.from_dict(data, source)
        return {model.column: model}
    check_header(data, source, SET_FORMAT, SET_VERSION)
    require(set(data) <= {"format", "version", "columns", "info"}, source, "unknown top-level key")
    columns = data.get("columns")
    require(isinstance(columns, list) and columns, source, "columns must be a non-empty list")
    models = {}
    for entry in columns:
        model = ScaleVGM.from_dict(entry, source)
        require(model.column not in models, source, f"column {model.column!r} appears twice")
        models[model.column] = model
    return models


def read_json(path):
    """A model file's JSON (ModelFileError, one line, when it is not one)."""
    return storage.read_json(path, "model file")
