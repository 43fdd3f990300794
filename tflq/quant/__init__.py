"""Quantization of Keras graphs: quantization functions and quantizers, schemes, the float
graph rewrites QAT needs (:mod:`~tflq.quant.graph`, :mod:`~tflq.quant.fold`), QAT wrapping and
training, and pruning/clustering. Depends on :mod:`tflq.models`; never on ptq, jobs or batch."""

__all__: list[str] = []  # a namespace package of modules; import them by name
