"""Which kernel multiplies int8 weights by bf16 activations: torch's, or the native one beside this
(built into one library with the decode step's fused small operations, kernels/decode_ops.cpp).

`torch._weight_int8pack_mm` (what torchao uses on a CPU) takes the rows four at a time and widens
every weight to float32 once per block of four, so on 2 Zen 4 cores a decode step of 8 rows of
SmolLM2-135M took 40 ms against 17 for one row: batching could not pass ~3.4x one stream.
`kernels/int8_bf16_mm.cpp` widens each weight once for up to 8 rows and multiplies with AVX512-BF16
dot products (the same numbers: int8 values are exact in bf16, products are summed in float32, the
scale applied once per output): a step of 8 rows 25 ms, of one row 15.4 (int8pack 16.5).
The lean engine keeps its weights in the kernel's tiled layout (`tile_rows`: 4 output rows a group,
read as one sequential stream), which took one decode row from ~16 to ~25 GB/s of weights.

``TWIN_INT8_KERNEL``: ``auto`` (the default) builds the native kernel where the CPU has AVX512-BF16,
or AVX2 and FMA (a float32 build of the same kernels, ``ISAS``), and a C++ compiler is installed
(once per machine, ~10 s, cached by torch under ``TORCH_EXTENSIONS_DIR``, default
~/.cache/torch_extensions), and falls back to torch's kernel, saying why, where it cannot;
``native`` refuses to start without it; ``torch`` never builds it.
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
# The library's builds, best first: the CPU flags each needs and what it is compiled with. AVX2 +
# FMA is the build for CPUs without AVX-512 (AMD Zen 1-3, most client Intel parts): on 2 cores of
# an AMD EPYC it decodes SmolLM2-135M 1.5x faster than torch's kernel with unfused operations, one
# stream and 8 (docs/decisions/0011).
ISAS = {
    "avx512-bf16": (("avx512f", "avx512bw", "avx512vl", "avx512_bf16"),
                    ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16"]),
    "avx2": (("avx2", "fma"), ["-mavx2", "-mfma"]),
}
CPU_FLAGS = ISAS["avx512-bf16"][0]
STEP = 32  # the native kernel's K granularity

_lock = threading.Lock()
_native: list = []  # [op or None, why not]: built (or refused) once per process


def check(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ModelUnavailable(f"unknown int8 kernel {kernel!r}: use one of {', '.join(KERNELS)} (TWIN_INT8_KERNEL)")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()  # off Linux: none known, so no native build is loaded
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def missing_cpu_flags(cpuinfo: str = "/proc/cpuinfo", isa: str = "avx512-bf16") -> list[str]:
    """The instruction sets the ``isa`` build needs that this CPU lacks (all of them off Linux)."""
    have = cpu_flags(cpuinfo)
    return [f for f in ISAS[isa][0] if f not in have]


def pick_isa(cpuinfo: str = "/proc/cpuinfo") -> tuple[str | None, str]:
    """-> (the best build this CPU runs, "") or (None, what it lacks)."""
    for isa in ISAS:
        if not missing_cpu_flags(cpuinfo, isa):
            return isa, ""
    return None, (f"this CPU lacks {', '.join(missing_cpu_flags(cpuinfo))} (AVX-512) and "
                  f"{', '.join(missing_cpu_flags(cpuinfo, 'avx2'))} (AVX2)")


def flags(isa: str) -> list[str]:
    return ["-O3", *ISAS[isa][1], "-fopenmp"]


def build_folder(root: Path, sources: tuple[Path, ...] = SOURCES, isa: str = "avx512-bf16") -> Path:
    """The build folder for these sources, these flags, this torch (version and place) and Python,
    with the sources copied in: every checkout of the same kernel finds the same build (ninja
    rebuilds when a source path changes, and rebuilding in place would replace a library other
    processes have loaded)."""
    codes = [source.read_bytes() for source in sources]
    # torch's place too: its headers' paths are in the build file, so two environments sharing a
    # cache folder would rebuild each other's library in place.
    built_for = (f"{' '.join(flags(isa))} torch {torch.__version__} at {Path(torch.__file__).parent} "
                 f"python {sys.version_info[:2]}")
    digest = hashlib.sha256(b"".join(hashlib.sha256(c).digest() for c in codes) + built_for.encode())
    folder = root / f"twin_int8-{isa}-{digest.hexdigest()[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    for source, code in zip(sources, codes, strict=True):
        copy = folder / source.name
        if not copy.exists() or copy.read_bytes() != code:
            temporary = folder / f".{source.name}.{os.getpid()}"
            temporary.write_bytes(code)
            temporary.replace(copy)
    return folder


def build(isa: str) -> None:
    """Compiles (or finds compiled) and loads the ``isa`` build; only on a CPU that runs it (the
    caller checks). The image build (`python -m services.generation.engines.transformers.int8_kernel`)
    does this once, for the build machine's CPU; a pod on another one compiles its own (~10 s)."""
    if hasattr(torch.ops.twin_int8, "decode_attention"):
        return
    from torch.utils import cpp_extension

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())
    folder = build_folder(root, SOURCES, isa)
    log.info("loading the native int8 kernel for %s (built once per machine, ~10 s the first time)", isa)
    cpp_extension.load(name="twin_int8", sources=[str(folder / s.name) for s in SOURCES], extra_cflags=flags(isa),
                       is_python_module=False, build_directory=str(folder), verbose=False)


def _build() -> tuple[Callable | None, str]:
    """-> (the op, "") or (None, why it is not available)."""
    isa, why = pick_isa()
    if isa is None:
        return None, why
    if not (shutil.which("c++") or shutil.which("g++")):
        return None, "no C++ compiler (install g++)"
    try:
        build(isa)
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


GROUP = 4  # output rows per group of the tiled layout (int8_bf16_mm.cpp's kGroup)


def tile_rows(weight: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 weights (N, K) and their scales -> the native kernel's tiled layout: rows padded with zeros
    to a multiple of 4, each group of 4 rows stored as K/32 blocks of [4 rows x 32 values] (one
    sequential stream for the group's 4 outputs: the decode multiplications ran 1.3-1.7x faster on 2
    Zen 4 cores, decision 0011). K must be a multiple of 32 (STEP)."""
    n, k = weight.shape
    if k % STEP:
        raise ValueError(f"K={k} is not a multiple of {STEP}")
    pad = -n % GROUP
    if pad:
        weight = torch.cat([weight, weight.new_zeros(pad, k)])
        scales = torch.cat([scales, scales.new_zeros(pad)])
    tiled = weight.view(-1, GROUP, k // STEP, STEP).permute(0, 2, 1, 3).contiguous().view(n + pad, k)
    return tiled, scales.contiguous()


def matmul_tiled(x: torch.Tensor, tiled: torch.Tensor, scales: torch.Tensor, n: int) -> torch.Tensor:
    """x (M, K) bf16 @ the ``n`` true rows of tiled int8 weights (tile_rows) -> (M, n) bf16."""
    y = torch.ops.twin_int8.int8_bf16_mm_tiled(x.contiguous(), tiled, scales)
    return y if y.shape[1] == n else y[:, :n].contiguous()


def matmul(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, op: Callable | None) -> torch.Tensor:
    """x (M, K) bf16 @ (weight (N, K) int8 * scales (N,))^T -> (M, N) bf16."""
    x = x.contiguous()
    if op is not None and x.shape[1] % STEP == 0:
        return op(x, weight, scales)
    return torch._weight_int8pack_mm(x, weight, scales)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    runs, _ = pick_isa()
    if runs is not None:
        build(runs)  # compiled and loaded here: the build works on this machine
    print(f"built {', '.join(s.name for s in SOURCES)} for {runs or 'no build this CPU runs'}")
