"""``package.module:function`` specs: recognizing them and importing the function.

Models and data sets can both be given this way; the current directory is importable, as it
is for ``python -m``.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable

__all__ = ["FACTORY_RE", "is_factory", "import_callable"]

FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_factory(spec: str) -> bool:
    """True for ``package.module:function`` that is not an existing path."""
    return bool(FACTORY_RE.match(spec)) and not os.path.exists(spec)


def import_callable(spec: str, what: str) -> Callable:
    """Imports the function a ``module:function`` spec names.

    Raises:
      ValueError: the module cannot be imported or has no such function (``what`` says
        which kind of spec it was, e.g. "Model factory").
    """
    module_name, func_name = spec.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{what} {spec!r}: cannot import {module_name!r}: {e}") from e
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"{what} {spec!r}: {module_name} has no function {func_name!r}.")
    return func
