"""LiteRT Quantizer (``ai-edge-quantizer``) as a second quantization backend.

The converter backend quantizes while converting; LiteRT Quantizer quantizes an already
converted float .tflite from a *recipe*. :func:`quantize` takes the float .tflite bytes, a
recipe name from :data:`RECIPES` and, for static recipes, calibration samples (dicts by
input name, batch 1), and returns the quantized .tflite bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["RECIPES", "check_recipe", "available", "quantize"]

# recipe name -> (needs calibration, what it does)
RECIPES = {
    "static_wi8_ai8": (True, "int8 weights and activations (full integer)"),
    "static_wi8_ai16": (True, "int8 weights, int16 activations"),
    "dynamic_wi8_afp32": (False, "int8 weights, activations quantized on the fly"),
    "dynamic_wi4_afp32": (False, "int4 weights, activations quantized on the fly"),
    "weight_only_wi8_afp32": (False, "int8 weights dequantized to float at load"),
    "weight_only_wi4_afp32": (False, "int4 weights dequantized to float at load"),
}


def check_recipe(name: str) -> None:
    if name not in RECIPES:
        raise ValueError(f"Unknown LiteRT recipe {name!r}. Available: {sorted(RECIPES)}")


def available() -> bool:
    """Whether ``ai-edge-quantizer`` can be imported here."""
    try:
        import ai_edge_quantizer  # noqa: F401
    except ImportError:
        return False
    return True


def quantize(float_tflite: bytes, recipe_name: str,
             samples: Callable[[], Iterable[dict]] | None = None,
             signature: str = "serving_default") -> bytes:
    """Quantizes a float .tflite with a LiteRT Quantizer recipe.

    Args:
      float_tflite: the float32 model's bytes.
      recipe_name: a key of :data:`RECIPES`.
      samples: for static recipes, a callable returning calibration samples
        ({input name: array with batch 1}).
      signature: the model's signature key.

    Raises:
      ValueError: unknown recipe, missing calibration data, or a recipe the model's ops do
        not support (LiteRT Quantizer's own message included).
    """
    check_recipe(recipe_name)
    needs_calibration = RECIPES[recipe_name][0]
    if needs_calibration and samples is None:
        raise ValueError(f"Recipe {recipe_name!r} needs calibration data.")
    if not available():
        raise ValueError("The LiteRT backend needs ai-edge-quantizer: pip install "
                         "'ai-edge-quantizer>=0.10'.")
    from ai_edge_quantizer import quantizer, recipe

    try:
        q = quantizer.Quantizer(bytearray(float_tflite))
        q.load_quantization_recipe(getattr(recipe, recipe_name)())
        if q.need_calibration:
            result = q.calibrate({signature: list(samples())}, num_threads=1)
            quantized = q.quantize(result, enable_progress_report=False)
        else:
            quantized = q.quantize(enable_progress_report=False)
    except Exception as e:  # the quantizer raises ValueError/RuntimeError/KeyError for ops
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise ValueError(f"LiteRT Quantizer could not apply {recipe_name!r}: "
                         f"{type(e).__name__}: {(lines[0] if lines else '')[:300]}") from e
    return bytes(quantized.quantized_model)
