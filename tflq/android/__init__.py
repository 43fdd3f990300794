"""On-device benchmarking over adb: the harness (:mod:`~tflq.android.harness`) and the parser
of ``benchmark_model`` output (:mod:`~tflq.android.output`)."""

from tflq.android.harness import *  # noqa: F403
from tflq.android.harness import __all__ as _harness_all
from tflq.android.output import *  # noqa: F403
from tflq.android.output import __all__ as _output_all

__all__ = [*_output_all, *_harness_all]
