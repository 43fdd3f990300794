"""Atomic file writes: a reader sees the old file or the complete new one, never a part."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile

__all__ = ["write_atomic", "update_digest", "sha256_of"]


def _new_file_mode(path: str) -> int:
    """The replaced file's permissions, or what open() would give a new file (umask)."""
    if os.path.exists(path):
        return stat.S_IMODE(os.stat(path).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: str, content: bytes) -> None:
    """Writes bytes so that ``path`` is either the old file or the complete new one.

    The new file keeps the permissions of the file it replaces (or the umask default), not
    the private mode of the temporary file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=".tflq-", suffix=".part", dir=folder)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def update_digest(digest, path: str) -> None:
    """Feeds a file's bytes, or a folder's files (relative names and bytes, in sorted order),
    into a hashlib digest, reading 1 MB at a time."""
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                digest.update(os.path.relpath(full, path).encode())
                update_digest(digest, full)
        return
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)


def sha256_of(path: str) -> str:
    """sha256 hex digest of a file or a folder (see :func:`update_digest`)."""
    digest = hashlib.sha256()
    update_digest(digest, path)
    return digest.hexdigest()
