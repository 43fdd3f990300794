"""Batch conversion: specs (:mod:`~tflq.batch.spec`), warm isolated workers
(:mod:`~tflq.batch.pool`, :mod:`~tflq.batch.worker`), job order (:mod:`~tflq.batch.schedule`),
outcomes (:mod:`~tflq.batch.outcome`), the cache and the local backend
(:mod:`~tflq.batch.runner`), the Ray backend (:mod:`~tflq.batch.ray_backend`). Importing it
does not import TensorFlow."""

from tflq.batch.pool import *  # noqa: F403
from tflq.batch.pool import __all__ as _pool_all
from tflq.batch.runner import *  # noqa: F403
from tflq.batch.runner import __all__ as _runner_all
from tflq.batch.schedule import *  # noqa: F403
from tflq.batch.schedule import __all__ as _schedule_all
from tflq.batch.spec import *  # noqa: F403
from tflq.batch.spec import __all__ as _spec_all

__all__ = [*_spec_all, *_pool_all, *_schedule_all, *_runner_all]
