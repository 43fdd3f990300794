"""Atomic file writes: a reader sees the old file or the complete new one, never a part."""

from __future__ import annotations

import os
import stat
import tempfile


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
