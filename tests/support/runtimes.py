"""What `auto` is expected to run on this machine, per tower: the rule is tested on its own in
test_export_cache; the encoder-facing tests check that the loaded towers follow it."""

from __future__ import annotations

from app.model.onnx_towers import available
from app.model.precision import cpu_has_native_bf16


def expected_auto() -> dict[str, tuple[str, str]]:
    """(runtime, precision) per tower under `auto` on the CPU."""
    native, openvino = cpu_has_native_bf16(), available("openvino")
    if native and openvino:
        return {"image": ("openvino", "bf16"), "text": ("openvino", "bf16")}
    if native:
        return {"image": ("torch", "bf16"), "text": ("onnx", "fp32")}
    return {"image": ("onnx", "fp32"), "text": ("onnx", "fp32")}


def parity_floor(kind: str) -> float:
    """The cosine to torch fp32 a tower keeps under `auto`: exports at parity, bf16 within its guard."""
    return 0.999 if expected_auto()[kind][1] == "bf16" else 0.99999
