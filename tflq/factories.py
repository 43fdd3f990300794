"""``package.module:function`` specs: recognizing them and importing the function.

Models and data sets can both be given this way; the current directory is importable, as it
is for ``python -m``.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator

__all__ = ["FACTORY_RE", "is_factory", "import_callable", "call_factory", "iterate_factory"]

FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_factory(spec: str) -> bool:
    """True for ``package.module:function`` that is not an existing path."""
    return bool(FACTORY_RE.match(spec)) and not os.path.exists(spec)


def import_callable(spec: str, what: str) -> Callable:
    """Imports the function a ``module:function`` spec names.

    Raises:
      ValueError: the module cannot be imported (or raises while importing) or has no such
        function (``what`` says which kind of spec it was, e.g. "Model factory").
    """
    module_name, func_name = spec.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{what} {spec!r}: cannot import {module_name!r}: {e}") from e
    except Exception as e:  # the module's own code failed at import (SyntaxError, ...)
        raise ValueError(f"{what} {spec!r}: importing {module_name!r} raised "
                         f"{type(e).__name__}: {e}") from e
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"{what} {spec!r}: {module_name} has no function {func_name!r}.")
    return func


def call_factory(func: Callable, spec: str, what: str):
    """Calls a user's factory; what it raises is the user's to fix.

    Raises:
      ValueError: the factory raised anything (a ValueError passes through; any other
        exception is wrapped in one that names the factory, e.g. "Model factory 'm:f'").
      MemoryError: running out of memory is no bad input; it passes through.
    """
    try:
        return func()
    except (ValueError, MemoryError):
        raise
    except Exception as e:
        raise ValueError(f"{what} {spec!r} raised {type(e).__name__}: {e}") from e


def iterate_factory(func: Callable, spec: str, what: str) -> Iterator:
    """Iterates what a user's generator function yields, as :func:`call_factory` calls it:
    an exception raised by the user's code names the generator."""
    items = call_factory(lambda: iter(func()), spec, what)
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except (ValueError, MemoryError):
            raise
        except Exception as e:
            raise ValueError(f"{what} {spec!r} raised {type(e).__name__}: {e}") from e
        yield item
