"""Generation on a GPU against the memory-bandwidth roofline (issue 12's GPU part), prepared for a
session that is lent the device; not yet run (no device was lent when it was written).

A randomly initialised model with Llama-3.1-8B's architecture in bf16 (as the training check does;
a real 8B checkpoint cannot travel to the machine), saved once so the platform's own backend can
load it. Measured, each at 1, 8 and 32 concurrent streams:
- the platform's `TransformersBackend` on CUDA (its own continuous-batching loop, SDPA attention);
- transformers' `generate` with a static cache and `torch.compile(mode="reduce-overhead")` (CUDA
  graphs): what compiling the decode step buys.
Roofline: a decode step reads every weight once (2 bytes each in bf16), so one step takes at least
2 N / 4.8 TB/s (the H200's HBM3e bandwidth); KV-cache reads come on top and are ignored (short
sequences). The goal is batch-1 decode at >= 50 % of it.

    python scripts/gpu_generation_check.py [--out DIR] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.gpu_train_check import LLAMA_31_8B  # noqa: E402 - after the path is set

H200_HBM_BYTES_PER_S = 4.8e12
BATCHES = (1, 8, 32)


def platform_backend_rates(path: str, new_tokens: int, device: str = "cuda") -> dict:
    from services.generation.api import SamplingParams
    from services.generation.engines.transformers import Engine as TransformersEngine

    backend = TransformersEngine(path, device=device, dtype="bfloat16", max_batch_size=max(BATCHES), batch_wait_s=0.05)
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0)

    async def streams(n: int) -> float:
        async def one(i: int) -> int:
            count = 0
            async for delta in backend.stream(backend.template.render([{"role": "user",
                                                                        "content": f"Story {i}: once"}]), params):
                count = delta.completion_tokens or count
            return count

        started = time.perf_counter()
        tokens = await asyncio.gather(*(one(i) for i in range(n)))
        return sum(tokens) / (time.perf_counter() - started)

    try:
        asyncio.run(streams(1))  # warm-up
        return {n: round(asyncio.run(streams(n)), 1) for n in BATCHES}
    finally:
        backend.close()


def timed_generate(model, ids, tokens: int) -> float:
    import torch

    torch.cuda.synchronize()
    started = time.perf_counter()
    model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    torch.cuda.synchronize()
    return time.perf_counter() - started


def compiled_generate_rates(path: str, new_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="sdpa").to("cuda")
    model.generation_config.cache_implementation = "static"
    model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
    rates = {}
    for n in BATCHES:
        ids = torch.randint(10, 2000, (n, 32), device="cuda")
        timed_generate(model, ids, new_tokens)  # compiles for this batch size and cache length
        timed_generate(model, ids, 1)  # and for the one-token run's (a static cache's length is the request's)
        # decode steps alone: the one-token run's prefill subtracted
        step_s = (timed_generate(model, ids, new_tokens) - timed_generate(model, ids, 1)) / (new_tokens - 1)
        rates[n] = round(n / step_s, 1)
    del model
    torch.cuda.empty_cache()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from training.tiny import build_tiny_model
    from twin_cli.sample_corpus import POSTS

    assert torch.cuda.is_available(), "no CUDA device"
    work = Path(tempfile.mkdtemp(prefix="gpu-generation-"))
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(work / "tok", [" ".join(p) for _, p in POSTS.values()],
                                                               vocab_size=2048))  # ChatML template
    config = LlamaConfig(**LLAMA_31_8B, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    started = time.perf_counter()
    with torch.device("cuda"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    path = work / "llama-8b-random"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    print(f"{n_params / 1e9:.2f} B parameters, saved in {time.perf_counter() - started:.0f} s", flush=True)

    roofline_steps = H200_HBM_BYTES_PER_S / (2 * n_params)
    report = {"gpu": torch.cuda.get_device_name(), "parameters": n_params, "new_tokens": args.new_tokens,
              "roofline_steps_per_s": round(roofline_steps, 1)}
    for name, measure in (("platform_backend", platform_backend_rates), ("compiled_generate", compiled_generate_rates)):
        rates = measure(str(path), args.new_tokens)
        report[name] = {str(n): {"tokens_per_s": r, "steps_per_s": round(r / n, 1),
                                 "of_roofline": round(r / n / roofline_steps, 3)} for n, r in rates.items()}
        print(name, json.dumps(report[name]), flush=True)
    print(json.dumps(report, indent=2), flush=True)
    Path(args.out, "gpu_generation_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
