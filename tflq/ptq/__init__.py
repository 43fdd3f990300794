"""Post-training quantization: the converter in every mode, tflq's range estimators,
cross-layer equalization, selective quantization, LiteRT Quantizer recipes and preflight
checks. Depends on :mod:`tflq.quant` and below; never on jobs or batch."""

__all__: list[str] = []  # a namespace package of modules; import them by name
