"""Weights for CPU serving: `none` (as loaded), `bf16`, or `int8` weight-only.

`int8` stores each linear layer's weight as int8 with one float scale per output channel and
multiplies on bf16 activations with the native kernel where the CPU has AVX512-BF16 or AVX2 + FMA, else torch's
(`torch._weight_int8pack_mm`, the one torchao uses on CPU): `int8_kernel` says which and why.
Activations are not quantized, so a row's output does not depend on what it is batched with, and
quality stays close to float32.

Measured on SmolLM2-135M, 2 cores (held-out perplexity of the sample posts; decode tokens/s of a
plain forward loop): float32 179.3 / 17.0, bf16 180.6 / 22.9, int8 weight-only 182.1 / 24.9.
Dynamic int8 (torch.ao `quantize_dynamic`: int8 activations too) was faster still but raised
perplexity to 217-521 and made a row's tokens depend on its batch: not offered. `make bench`
prints the serving loop's figures for each.

The layers LoRA adapters wrap stay bf16 ``nn.Linear``: PEFT cannot wrap a quantized layer, and
the training default's targets are what every default twin was trained on.
"""

from __future__ import annotations

import torch

from llm_twin.twinmodel import LoraSettings

from ...errors import ModelUnavailable
from . import int8_kernel

QUANTIZATIONS = ("auto", "none", "int8", "bf16")
INT8_KEEP = tuple(LoraSettings.model_fields["target_modules"].default)


class Int8WeightOnlyLinear(torch.nn.Module):
    """A linear layer with int8 weights and per-output-channel scales."""

    def __init__(self, linear: torch.nn.Linear, op=None):
        super().__init__()
        self.op = op  # the native int8 kernel, or None: torch's
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127
        self.register_buffer("weight_int8", torch.clamp((weight / scales[:, None]).round(), -128, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().to(torch.bfloat16))
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(torch.bfloat16).contiguous()
        out = int8_kernel.matmul(flat, self.weight_int8, self.scales, self.op).reshape(*shape[:-1], self.out_features)
        out = out if self.bias is None else out + self.bias
        return out.to(x.dtype)


def resolve(quantization: str, device: str) -> str:
    """``auto`` (the default): int8 on a CPU, where it is the fastest at +1.6% perplexity; as
    loaded on a GPU (bf16 there via TWIN_GENERATION_DTYPE, or the tensorrt-llm engine)."""
    check(quantization)
    if quantization == "auto":
        return "int8" if device == "cpu" else "none"
    return quantization


def load_dtype(quantization: str, default):
    """The dtype to load the model in: int8 and bf16 both compute in bf16."""
    check(quantization)
    return torch.bfloat16 if quantization in ("int8", "bf16") else default


def check(quantization: str) -> None:
    if quantization not in QUANTIZATIONS:
        raise ModelUnavailable(f"unknown quantization {quantization!r}: use one of {', '.join(QUANTIZATIONS)} "
                               "(TWIN_GENERATION_QUANTIZATION)")


def _int8_on(device: str) -> None:
    if device != "cpu":
        raise ModelUnavailable("int8 weight-only quantization is for CPU serving; on a GPU use bf16 or the "
                               "tensorrt-llm engine")


def int8_op(quantization: str, kernel: str, device: str = "cpu"):
    """The native int8 kernel for int8 serving (None: torch's); a kernel asked for by name with
    weights that are not int8 is refused rather than ignored, and int8 on a GPU before anything
    is compiled for it."""
    int8_kernel.check(kernel)
    if quantization != "int8":
        if kernel != "auto":
            raise ModelUnavailable(f"TWIN_INT8_KERNEL={kernel} applies to int8 weights, and these are "
                                   f"{quantization!r}: set TWIN_GENERATION_QUANTIZATION=int8 (or auto on a CPU), "
                                   "or leave TWIN_INT8_KERNEL at auto")
        return None
    _int8_on(device)
    return int8_kernel.native(kernel)


def quantize(model: torch.nn.Module, quantization: str, device: str, op=None) -> set[str]:
    """In place; -> the short names of the layers now int8 (gate_proj, lm_head, ...)."""
    check(quantization)
    if quantization != "int8":
        return set()
    _int8_on(device)
    names: set[str] = set()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and name not in INT8_KEEP:
                setattr(parent, name, Int8WeightOnlyLinear(child, op))
                names.add(name)
    return names


def adapter_targets(path: str) -> set[str]:
    """The module names a saved LoRA adapter wraps (from its adapter_config.json)."""
    import json
    import os

    try:
        with open(os.path.join(path, "adapter_config.json")) as f:
            targets = json.load(f).get("target_modules") or []
    except (OSError, ValueError):
        return set()
    return set(targets if isinstance(targets, list) else [targets])
