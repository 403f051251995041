"""Where files live: a local path or an fsspec URL (s3://, gs://, memory://, ...).

Local directories appear atomically (gpu_vgm.atomic: built under a temporary name, renamed
into place). Object stores have no rename: the output is built under a temporary prefix, then
copied to its place with ``_manifest.json`` copied last, so a reader that waits for the
manifest never sees a partial output; the temporary prefix is deleted at the end or on error.
"""

import contextlib
import hashlib
import json
import os
import secrets

import fsspec

from gpu_vgm import atomic
from gpu_vgm.errors import InputError, ModelFileError, OutputError, first_line


def is_remote(url):
    return "://" in str(url) and not str(url).startswith("file://")


def filesystem(url):
    """(fsspec filesystem, path inside it)."""
    return fsspec.core.url_to_fs(str(url))


def join(url, name):
    return f"{str(url).rstrip('/')}/{name}"


def unstrip(fs, path):
    """A filesystem's path as the URL (or local path) the functions here take."""
    if "file" in ([fs.protocol] if isinstance(fs.protocol, str) else fs.protocol):
        return path
    return fs.unstrip_protocol(path)


def read_bytes(url):
    """A local file's or a URL's bytes (``--model-in s3://...`` is read like a path)."""
    if not is_remote(url):
        with open(url, "rb") as f:
            return f.read()
    fs, path = filesystem(url)
    return fs.cat_file(path)


def footer_sha256(url):
    """SHA-256 of a Parquet file's footer: the manifest records it for each part, so that
    ``inverse`` refuses a part that was changed or swapped for another."""
    if not is_remote(url):
        with open(url, "rb") as f:
            return footer_digest(f)
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        return footer_digest(f)


def footer_digest(f):
    """SHA-256 of an open Parquet file's footer (its row groups, offsets, sizes, statistics):
    it changes with any rewrite of the file that changes the data's bytes."""
    f.seek(0, 2)
    size = f.tell()
    if size < 12:
        raise ValueError("too small for Parquet")
    f.seek(size - 8)
    tail = f.read(8)
    if tail[4:] != b"PAR1":
        raise ValueError("no Parquet footer")
    length = int.from_bytes(tail[:4], "little")
    if length + 12 > size:
        raise ValueError("bad footer length")
    f.seek(size - 8 - length)
    return hashlib.sha256(f.read(length) + tail).hexdigest()


def read_text(url):
    if not is_remote(url):
        with open(url, encoding="utf-8") as f:
            return f.read()
    fs, path = filesystem(url)
    with fs.open(path, "r", encoding="utf-8") as f:
        return f.read()


def write_json(url, data):
    """JSON (no NaN) written whole: a temporary file renamed into place where that exists."""
    url = os.fspath(url)
    text = json.dumps(data, indent=1, allow_nan=False)
    if is_remote(url):
        fs, path = filesystem(url)
        fs.pipe(path, text.encode("utf-8"))
        return
    tmp = f"{url}.tmp-{os.getpid()}"
    atomic.make_parents(atomic.resolved(url))
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, url)


def read_json(url, what="file"):
    """Parse a JSON file that may be hostile: NaN, Infinity and deep nesting are refused;
    ModelFileError, one line naming ``what`` and the file, when it is not valid JSON."""
    url = os.fspath(url)
    try:
        return json.loads(read_text(url), parse_constant=_reject_constant)
    except FileNotFoundError:
        raise ModelFileError(f"{url}: {what} not found") from None
    except IsADirectoryError:
        raise ModelFileError(f"{url}: is a directory, expected a {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(f"{url}: not a valid {what} (bad JSON: {exc})") from None
    except RecursionError:
        raise ModelFileError(f"{url}: not a valid {what} (JSON nested too deeply)") from None


def _reject_constant(name):
    raise ValueError(f"{name} is not allowed")


def check_output(url, overwrite=False):
    """Fail early (OutputError) where ``url`` cannot become a new output directory."""
    if not is_remote(url):
        return atomic.check_output(url, overwrite)
    if _remote_exists(url) and not overwrite:
        raise OutputError(f"{url} exists; pass --overwrite to replace it")
    return url


def _remote_exists(url, name=""):
    fs, path = remote_fs(url)
    try:
        return fs.exists(f"{path.rstrip('/')}/{name}" if name else path)
    except Exception as exc:  # credentials, network: whatever the store's client raises
        raise OutputError(f"{url}: cannot reach it ({first_line(exc)})") from None


def remote_fs(url):
    """(filesystem, path) of an output URL; one line for a scheme fsspec does not know, and
    memory://, which the worker processes do not share with this one."""
    try:
        fs, path = filesystem(url)
    except (ImportError, ValueError) as exc:
        raise OutputError(f"{url}: cannot open this location ({first_line(exc)})") from None
    if "memory" in ([fs.protocol] if isinstance(fs.protocol, str) else fs.protocol):
        raise OutputError(f"{url}: memory:// is private to each process; use a path or a store")
    return fs, path


def check_output_file(url, overwrite=False, flag="--output"):
    """Fail early (OutputError) where ``url`` cannot become a new file."""
    if is_remote(url):
        if _remote_exists(url) and not overwrite:
            raise OutputError(f"{flag} {url} exists; pass --overwrite to replace it")
        return
    path = atomic.resolved(url)
    if path.is_dir():
        raise OutputError(f"{flag} {url} is a directory; give a file name")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputError(f"{flag} {url} exists; pass --overwrite to replace it")
    atomic.check_parent(path, f"{flag} {url}")


def place(url):
    """(protocol, absolute path) of a local path or URL, to compare places (local paths fully
    resolved: a symlink to the input overlaps it)."""
    if not is_remote(url):
        return "file", os.path.realpath(str(url).removeprefix("file://"))
    try:
        fs, path = filesystem(url)
    except (ImportError, ValueError) as exc:
        raise InputError(f"{url}: cannot open this location ({first_line(exc)})") from None
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol, "/" + path.strip("/")


def _replaceable(url):
    """Nothing there yet, or a folder gpu_vgm wrote (its _manifest.json says so)."""
    if is_remote(url):
        if not _remote_exists(url):
            return True
        if not _remote_exists(url, "_manifest.json"):
            return False
        fs, path = remote_fs(url)
        text = fs.cat_file(f"{path.rstrip('/')}/_manifest.json").decode("utf-8", "replace")
    else:
        path = atomic.resolved(url)
        if not (path.exists() or path.is_symlink()):
            return True
        if path.is_symlink() or not (path / "_manifest.json").is_file():
            return False
        text = (path / "_manifest.json").read_text(encoding="utf-8", errors="replace")
    try:
        return str(json.loads(text).get("format", "")).startswith("gpu_vgm.")
    except (ValueError, AttributeError):
        return False


def _relative(inner, outer):
    """The path of ``inner`` below ``outer`` ("" for the same place), or None."""
    if inner[0] != outer[0]:
        return None
    if inner[1] == outer[1]:
        return ""
    prefix = outer[1].rstrip("/") + "/"
    return inner[1][len(prefix) :] if inner[1].startswith(prefix) else None


def check_apart(output, inputs, flag="--output", inside="unless-hidden"):
    """OutputError where ``output`` is or holds one of ``inputs`` (``--overwrite`` would delete
    it), or lies inside one. ``inside`` says what may lie inside an input: nothing
    ("refused"); a new folder, or one gpu_vgm wrote, with a name starting with "_" or "."
    ("unless-hidden": never read back as input, and never the input's own _model.json,
    _metadata or _delta_log); or a JSON file outside such names ("json": a model file)."""
    out = place(output)
    for inp in inputs:
        where = place(inp)
        below = _relative(out, where)
        if _relative(where, out) is not None or (
            below is not None and not _may_lie_inside(output, below, inside)
        ):
            raise OutputError(f"{flag} {output} overlaps {inp}; choose a place outside it")


def _may_lie_inside(output, below, inside):
    parts = [p for p in below.split("/") if p]
    hidden = any(p.startswith(("_", ".")) for p in parts)
    if inside == "unless-hidden":
        return hidden and _replaceable(output)
    if inside == "json":
        return bool(parts) and not hidden and parts[-1].endswith(".json")
    return False


@contextlib.contextmanager
def output_directory(url, overwrite=False, reuse=None, last="_manifest.json"):
    """Yield a temporary location (path or URL) that becomes ``url`` when the block succeeds."""
    if not is_remote(url):
        with atomic.atomic_directory(url, overwrite, reuse=reuse) as tmp:
            yield tmp
        return
    check_output(url, overwrite)
    fs, path = filesystem(url)
    protocol = str(url).split("://", 1)[0]
    tmp_path = f"{path.rstrip('/')}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        yield f"{protocol}://{tmp_path}"
        if fs.exists(path):
            if not overwrite:
                raise OutputError(f"{url} exists; pass --overwrite to replace it")
            fs.rm(path, recursive=True)
        fs.invalidate_cache()  # the workers wrote the parts; this process has not seen them
        names = sorted(p.rsplit("/", 1)[1] for p in fs.find(tmp_path))
        for name in sorted(names, key=lambda n: n == last):  # the manifest goes last
            fs.copy(f"{tmp_path}/{name}", f"{path.rstrip('/')}/{name}")
    finally:
        atomic.remove_until_gone(
            lambda: _remove_prefix(fs, tmp_path),
            lambda: _gone(fs, tmp_path),
            f"{protocol}://{tmp_path}",
        )


# Whatever the store's client raises while a temporary prefix is removed is ignored: the job's
# own error, if any, is the one to show.
def _remove_prefix(fs, path):
    with contextlib.suppress(Exception):
        fs.rm(path, recursive=True)
    fs.invalidate_cache()


def _gone(fs, path):
    try:
        return not fs.exists(path)
    except Exception:
        return False
