"""Batch conversion: specs (:mod:`~tflq.batch.spec`), isolated workers, the cache and the
local/Ray backends (:mod:`~tflq.batch.runner`). Importing it does not import TensorFlow."""

from tflq.batch.runner import *  # noqa: F403
from tflq.batch.runner import __all__ as _runner_all
from tflq.batch.spec import *  # noqa: F403
from tflq.batch.spec import __all__ as _spec_all

__all__ = [*_spec_all, *_runner_all]
