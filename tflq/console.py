"""What a command shows: its own lines on the terminal, everyone else's chatter in a log.

TensorFlow, the TFLite converter and LiteRT write straight to file descriptors 1 and 2 from
C++ (absl's pre-init warning, oneDNN and CUDA probes, calibrator settings, XNNPACK delegate
lines), where no Python setting reaches them. :class:`OutputCapture` points both
descriptors at a temporary file for the length of a command while ``sys.stdout`` and
``sys.stderr`` keep writing to the real terminal, and sends Python warnings and log records
to the same file, so the command's own lines stay readable and nothing is lost.

Progress shows as bars on a terminal and as one line per stage with its duration elsewhere
(CI logs, app builds), where carriage-return bars turn into hundreds of fragments.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable

__all__ = ["OutputCapture", "active_capture", "progress", "wants_bars"]

_ACTIVE: list[OutputCapture] = []  # the capture in force (a stack; at most one in practice)


def active_capture() -> OutputCapture | None:
    """The :class:`OutputCapture` in force, or None."""
    return _ACTIVE[-1] if _ACTIVE else None


class OutputCapture:
    """Sends everything written to file descriptors 1 and 2 to a temporary log file.

    Inside the ``with`` block ``sys.stdout`` and ``sys.stderr`` are new streams on the
    original descriptors (the terminal, a pipe, a CI log), so ``print`` and progress bars
    still reach the user; whatever C/C++ code writes to descriptor 1 or 2, Python warnings
    and records of the ``logging`` module go to the log. :meth:`text` returns the log;
    :meth:`save` copies it into place.

    Example:
      with OutputCapture() as capture:
          import tensorflow  # its start-up lines go to the log
          print("only this reaches the terminal")
      capture.save("out/tflq.log")
    """

    def __init__(self):
        self._log = None
        self._saved: dict[int, int] = {}
        self._streams = None
        self._showwarning = None
        self._handler = None
        self._root_handlers = None
        self._redirected = []
        self.kept = False  # the log was already kept elsewhere (e.g. in error.log)

    def __enter__(self) -> OutputCapture:
        sys.stdout.flush()
        sys.stderr.flush()
        self._log = tempfile.TemporaryFile(prefix="tflq-log-")
        self._streams = (sys.stdout, sys.stderr)
        for fd in (1, 2):
            self._saved[fd] = os.dup(fd)
        out_stream = _text_stream(self._saved[1], self._streams[0])
        err_stream = _text_stream(self._saved[2], self._streams[1])
        for fd in (1, 2):
            os.dup2(self._log.fileno(), fd)
        # sys.__stdout__/__stderr__ write to descriptors 1 and 2: into the log from now on.
        log_stream = sys.__stderr__ if sys.__stderr__ is not None else io.StringIO()
        self._showwarning = warnings.showwarning

        def to_log(message, category, filename, lineno, file=None, line=None):
            log_stream.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = to_log
        root = logging.getLogger()
        self._root_handlers = list(root.handlers)
        self._handler = logging.StreamHandler(log_stream)
        self._handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s: %(message)s"))
        for handler in self._root_handlers:
            root.removeHandler(handler)
        root.addHandler(self._handler)
        # Loggers with their own console handler (TensorFlow adds one to "tensorflow" when
        # it is imported before the root logger has a handler) write to the log as well.
        self._redirected = []
        consoles = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
        for logger in logging.Logger.manager.loggerDict.values():
            for handler in getattr(logger, "handlers", ()):
                if isinstance(handler, logging.StreamHandler) and handler.stream in consoles:
                    # setStream returns None when the stream is unchanged: keep our own copy,
                    # or a handler already on sys.__stderr__ ends up with no stream at all.
                    self._redirected.append((handler, handler.stream))
                    handler.setStream(log_stream)
        sys.stdout, sys.stderr = out_stream, err_stream
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
        sys.stdout, sys.stderr = self._streams
        warnings.showwarning = self._showwarning
        root = logging.getLogger()
        root.removeHandler(self._handler)
        for handler in self._root_handlers:
            root.addHandler(handler)
        for handler, stream in self._redirected:
            handler.setStream(stream)
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        self._saved = {}

    def text(self) -> bytes:
        """Everything captured so far."""
        for stream in (sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
        self._log.seek(0)
        return self._log.read()

    def save(self, path: str, header: str = "") -> None:
        """Writes ``header`` and the captured output to ``path`` atomically."""
        from tflq.fileio import write_atomic

        write_atomic(path, header.encode() + self.text())
        self.kept = True


def _text_stream(fd: int, like) -> io.TextIOWrapper:
    """A text stream on ``fd`` (not closing it) with the encoding of the stream it replaces."""
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(raw, encoding=getattr(like, "encoding", None) or "utf-8",
                            errors="backslashreplace", line_buffering=True, write_through=True)


def wants_bars(style: bool | str) -> bool:
    """True when ``style`` asks for bars: ``"bars"``, or ``True`` (automatic) and stderr is a
    terminal."""
    if style == "bars":
        return True
    return style is True and sys.stderr.isatty()


def progress(style: bool | str, desc: str, total: int | None,
             unit: str = "sample") -> Callable[[Iterable], Iterable] | None:
    """A function wrapping an iterable to show its progress, or None to show nothing.

    Args:
      style: False (nothing), ``"bars"`` (tqdm bars), ``"lines"`` (one line per stage when it
        ends: ``convert: 5 modes in 4.2 s``), or True: bars when stderr is a terminal, lines
        otherwise.
      desc: the stage's name.
      total: the number of items, when known.
      unit: what an item is (singular).
    """
    if not style:
        return None
    if wants_bars(style):
        from tqdm.auto import tqdm

        return lambda items: tqdm(items, desc=desc, total=total, unit=unit, leave=False,
                                  file=sys.stderr)
    if style not in (True, "lines"):
        raise ValueError(f"progress must be False, True, 'bars' or 'lines'. Received: {style!r}")

    def lines(items):
        start, count = time.perf_counter(), 0
        for item in items:
            count += 1
            yield item
        print(f"{desc}: {count} {_plural(unit, count)} in "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr)

    return lines


def _plural(unit: str, count: int) -> str:
    if count == 1:
        return unit
    return unit + ("es" if unit.endswith(("s", "ch", "sh", "x")) else "s")
