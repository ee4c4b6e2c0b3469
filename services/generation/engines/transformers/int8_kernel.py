"""Which kernel multiplies int8 weights by bf16 activations: torch's, or the native one beside this
(built into one library with the decode step's fused small operations, kernels/decode_ops.cpp).

`torch._weight_int8pack_mm` (what torchao uses on a CPU) takes the rows four at a time and widens
every weight to float32 once per block of four, so on 2 Zen 4 cores a decode step of 8 rows of
SmolLM2-135M took 40 ms against 17 for one row: batching could not pass ~3.4x one stream.
`kernels/int8_bf16_mm.cpp` widens each weight once for up to 8 rows and multiplies with AVX512-BF16
dot products (the same numbers: int8 values are exact in bf16, products are summed in float32, the
scale applied once per output): a step of 8 rows 25 ms, of one row 15.4 (int8pack 16.5).

``TWIN_INT8_KERNEL``: ``auto`` (the default) builds the native kernel where the CPU has AVX512-BF16
and a C++ compiler is installed (once per machine, ~10 s, cached by torch under
``TORCH_EXTENSIONS_DIR``, default ~/.cache/torch_extensions) and falls back to torch's kernel,
saying why, where it cannot; ``native`` refuses to start without it; ``torch`` never builds it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from ...errors import ModelUnavailable

log = logging.getLogger(__name__)

KERNELS = ("auto", "native", "torch")
KERNELS_DIR = Path(__file__).parent / "kernels"
# One library: the multiplication, and the decode step's small operations around it (decode_ops.cpp).
SOURCES = (KERNELS_DIR / "int8_bf16_mm.cpp", KERNELS_DIR / "decode_ops.cpp")
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16")
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-fopenmp"]
STEP = 32  # the native kernel's K granularity

_lock = threading.Lock()
_native: list = []  # [op or None, why not]: built (or refused) once per process


def check(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ModelUnavailable(f"unknown int8 kernel {kernel!r}: use one of {', '.join(KERNELS)} (TWIN_INT8_KERNEL)")


def missing_cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The instruction sets the native kernel needs that this CPU lacks (all of them off Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return list(CPU_FLAGS)
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return [f for f in CPU_FLAGS if f not in flags]


def build_folder(root: Path, sources: tuple[Path, ...] = SOURCES) -> Path:
    """The build folder for these sources, these flags, this torch (version and place) and Python,
    with the sources copied in: every checkout of the same kernel finds the same build (ninja
    rebuilds when a source path changes, and rebuilding in place would replace a library other
    processes have loaded)."""
    codes = [source.read_bytes() for source in sources]
    # torch's place too: its headers' paths are in the build file, so two environments sharing a
    # cache folder would rebuild each other's library in place.
    built_for = (f"{' '.join(FLAGS)} torch {torch.__version__} at {Path(torch.__file__).parent} "
                 f"python {sys.version_info[:2]}")
    digest = hashlib.sha256(b"".join(hashlib.sha256(c).digest() for c in codes) + built_for.encode())
    folder = root / f"twin_int8-{digest.hexdigest()[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    for source, code in zip(sources, codes, strict=True):
        copy = folder / source.name
        if not copy.exists() or copy.read_bytes() != code:
            temporary = folder / f".{source.name}.{os.getpid()}"
            temporary.write_bytes(code)
            temporary.replace(copy)
    return folder


def build() -> None:
    """Compiles (or finds compiled) and loads the kernel, whatever this CPU runs: the image build
    (`python -m services.generation.engines.transformers.int8_kernel`) does this once for every pod."""
    if not hasattr(torch.ops.twin_int8, "decode_attention"):
        from torch.utils import cpp_extension

        root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())
        folder = build_folder(root)
        log.info("loading the native int8 kernel (built once per machine, ~10 s the first time)")
        cpp_extension.load(name="twin_int8", sources=[str(folder / s.name) for s in SOURCES], extra_cflags=FLAGS,
                           is_python_module=False, build_directory=str(folder), verbose=False)


def _build() -> tuple[Callable | None, str]:
    """-> (the op, "") or (None, why it is not available)."""
    missing = missing_cpu_flags()
    if missing:
        return None, f"this CPU lacks {', '.join(missing)}"
    if not (shutil.which("c++") or shutil.which("g++")):
        return None, "no C++ compiler (install g++)"
    try:
        build()
    except Exception as exc:  # noqa: BLE001 - a compiler or ninja problem: say which, serve with torch's kernel
        return None, f"building the native kernels failed: {str(exc).strip().splitlines()[-1][:300]}"
    return torch.ops.twin_int8.int8_bf16_mm, ""


def native(kernel: str) -> Callable | None:
    """The native op for ``kernel`` (auto/native), or None for torch's (auto falls back, saying why);
    ``native`` that cannot be had raises, naming the fix."""
    check(kernel)
    if kernel == "torch":
        return None
    with _lock:
        if not _native:
            _native.extend(_build())
    op, why = _native
    if op is None and kernel == "native":
        raise ModelUnavailable(f"TWIN_INT8_KERNEL=native: {why}; set TWIN_INT8_KERNEL=auto or torch to use "
                               "torch's int8 kernel")
    if op is None:
        log.warning("int8 weights multiply with torch's kernel (slower for batches): %s", why)
    return op


def matmul(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, op: Callable | None) -> torch.Tensor:
    """x (M, K) bf16 @ (weight (N, K) int8 * scales (N,))^T -> (M, N) bf16."""
    x = x.contiguous()
    if op is not None and x.shape[1] % STEP == 0:
        return op(x, weight, scales)
    return torch._weight_int8pack_mm(x, weight, scales)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    build()
    able = "can" if not missing_cpu_flags() else "cannot"
    print(f"built {', '.join(s.name for s in SOURCES)}; this CPU {able} run it")
