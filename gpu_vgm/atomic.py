"""All-or-nothing output directories: build in a temporary sibling, rename into place at the end.

``with atomic_directory(out, overwrite) as tmp:`` yields ``out.tmp-<pid>-<random>`` (a fresh empty
directory next to ``out``). When the block finishes, ``tmp`` becomes ``out``; when it raises,
``tmp`` is removed and ``out`` is untouched. With ``overwrite`` an existing ``out`` is replaced
only once the new content is complete (old renamed aside, new renamed in, old deleted).
Local filesystem paths only: the renames rely on POSIX same-directory rename semantics.
"""

import contextlib
import logging
import os
import secrets
import shutil
import time
from pathlib import Path

from gpu_vgm.errors import OutputError

log = logging.getLogger("gpu_vgm")


def remove_until_gone(remove, gone, shown, tries=50):
    """Call ``remove()`` until ``gone()``, for up to ``tries`` tenths of a second, then warn
    naming ``shown``. A worker still finishing a task of a failed job may write a part while
    a temporary output is being removed (a local rmtree's final rmdir then fails)."""
    for _ in range(tries):
        remove()
        if gone():
            return
        time.sleep(0.1)
    log.warning("could not remove the temporary %s; delete it by hand", shown)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        remove_until_gone(
            lambda: shutil.rmtree(path, ignore_errors=True), lambda: not path.exists(), path
        )
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f"{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")


def resolved(path) -> Path:
    """``path`` with its folder resolved as the OS resolves it (symlinks, ".."), and its last
    name as typed, so that an output which is a symlink is replaced, not followed."""
    path = os.fspath(path)
    head, name = os.path.split(path.rstrip(os.sep) or os.sep)
    if name in ("", ".", ".."):  # "." or "dir/..": no name of its own
        return Path(os.path.realpath(path))
    return Path(os.path.realpath(head or os.curdir)) / name


def check_parent(path: Path, what: str) -> None:
    """OutputError unless ``path``'s folder exists and is writable, or can be created (missing
    folders are created, as Dask's and Spark's writers do: ``make_parents``)."""
    parent = path.parent
    while not (parent.exists() or parent.is_symlink()) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {what}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {what}: parent directory {parent} is not writable")


def make_parents(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot write {path}: cannot create {path.parent}: {exc.strerror}"
        ) from exc


def check_output(path, overwrite: bool = False) -> Path:
    """Raise OutputError unless ``path`` can be created (or replaced, with ``overwrite``)."""
    shown, path = path, resolved(path)
    cwd = Path(os.path.realpath(os.curdir))
    if path == cwd or path in cwd.parents:
        raise OutputError(f"{shown} holds the current directory; choose an output outside it")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise OutputError(f"{shown} exists; pass --overwrite to replace it")
    check_parent(path, shown)
    return path


@contextlib.contextmanager
def atomic_directory(path, overwrite: bool = False, reuse=None):
    """Yield a temporary sibling directory that replaces ``path`` when the block succeeds.

    ``reuse`` adopts an existing temporary directory (left by a killed run) instead; it is
    kept if the block fails, with the parts written so far.
    """
    path = check_output(path, overwrite)
    make_parents(path)
    tmp = Path(reuse) if reuse else _sibling(path, "tmp")
    try:
        if not reuse:
            tmp.mkdir()
    except OSError as exc:
        raise OutputError(f"cannot write {path}: cannot create {tmp}: {exc.strerror}") from exc
    try:
        yield tmp
    except BaseException:
        if not reuse:  # an adopted leftover keeps its finished parts for another --resume
            _remove(tmp)
        raise
    try:
        if path.exists() or path.is_symlink():
            if not overwrite:  # appeared while we were working
                raise OutputError(f"{path} exists; pass --overwrite to replace it")
            old = _sibling(path, "old")
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            _remove(old)
        else:
            os.rename(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise OutputError(f"cannot move the finished output into {path}: {exc.strerror}") from exc
    except BaseException:
        _remove(tmp)
        raise
