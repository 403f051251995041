"""Where files live: a local path or an fsspec URL (s3://, gs://, memory://, ...).

Local directories appear atomically (gpu_vgm.atomic: built under a temporary name, renamed
into place). Object stores have no rename: the output is built under a temporary prefix, then
copied to its place with ``_manifest.json`` copied last, so a reader that waits for the
manifest never sees a partial output; the temporary prefix is deleted at the end or on error.
"""

import contextlib
import json
import os
import secrets
import time

import fsspec

from gpu_vgm import atomic
from gpu_vgm.errors import OutputError


def is_remote(url):
    return "://" in str(url) and not str(url).startswith("file://")


def filesystem(url):
    """(fsspec filesystem, path inside it)."""
    return fsspec.core.url_to_fs(str(url))


def join(url, name):
    return f"{str(url).rstrip('/')}/{name}"


def read_text(url):
    if not is_remote(url):
        with open(url, encoding="utf-8") as f:
            return f.read()
    fs, path = filesystem(url)
    with fs.open(path, "r", encoding="utf-8") as f:
        return f.read()


def write_json(url, data):
    """JSON (no NaN) written whole: a temporary file renamed into place where that exists."""
    text = json.dumps(data, indent=1, allow_nan=False)
    if is_remote(url):
        fs, path = filesystem(url)
        fs.pipe(path, text.encode("utf-8"))
        return
    tmp = f"{url}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, url)


def check_output(url, overwrite=False):
    """Fail early (OutputError) where ``url`` cannot become a new output directory."""
    if not is_remote(url):
        return atomic.check_output(url, overwrite)
    fs, path = filesystem(url)
    if fs.exists(path) and not overwrite:
        raise OutputError(f"{url} exists; pass --overwrite to replace it")
    return url


def check_output_file(url, overwrite=False, flag="--output"):
    """Fail early (OutputError) where ``url`` cannot become a new file."""
    if is_remote(url):
        fs, path = filesystem(url)
        if fs.exists(path) and not overwrite:
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
    fs, path = filesystem(url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol, "/" + path.strip("/")


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
    it), or lies inside one: ``inside`` says whether that is "refused", "allowed", or refused
    "unless-hidden": a name starting with "_" or "." is never read back as input."""
    out = place(output)
    for inp in inputs:
        where = place(inp)
        below = _relative(out, where)
        nested = below is not None and (
            inside == "refused"
            or (
                inside == "unless-hidden"
                and not any(part.startswith(("_", ".")) for part in below.split("/") if part)
            )
        )
        if _relative(where, out) is not None or nested:
            raise OutputError(f"{flag} {output} overlaps {inp}; choose a place outside it")


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
        # A worker still finishing a task of a failed job may write a part after the first
        # removal: go again until the prefix stays empty (as atomic._remove does locally).
        for _ in range(50):
            with contextlib.suppress(FileNotFoundError):
                fs.rm(tmp_path, recursive=True)
            fs.invalidate_cache()
            if not fs.exists(tmp_path):
                break
            time.sleep(0.1)
