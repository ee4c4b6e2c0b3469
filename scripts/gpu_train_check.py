"""The real SFT + DPO path on a GPU, without Ray (the GPU machine has no Ray, and a real 8B
checkpoint cannot travel there): the project's training function on a randomly initialised model
with Llama-3.1-8B's architecture, bf16, LoRA. Prints tokens/s and model FLOPs utilisation.

    python scripts/gpu_train_check.py [--out DIR] [--sft-steps 30] [--dpo-steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LLAMA_31_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                   rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
H200_BF16_PEAK = 989e12  # dense bf16 tensor-core peak (datasheet); ~790e12 measured for a large GEMM here


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--sft-steps", type=int, default=30)
    parser.add_argument("--dpo-steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    args = parser.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.config import TrainConfig
    from training.sft_dpo import train
    from training.tiny import build_tiny_model
    from twin_cli.bench_training import synthetic_dataset
    from twin_cli.sample_corpus import AUTHOR, POSTS

    assert torch.cuda.is_available(), "no CUDA device"
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    texts = [" ".join(p) for _, p in POSTS.values()]
    tiny = build_tiny_model(work / "tok", texts, vocab_size=2048)  # its tokenizer (ChatML) is what we need
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    synthetic_dataset(work / "data", rows=max(args.sft_steps, args.dpo_steps) * args.batch, articles_per_answer=6)

    started = time.perf_counter()
    config = LlamaConfig(**LLAMA_31_8B, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    with torch.device("cuda"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    init_s = time.perf_counter() - started
    print(f"random Llama-3.1-8B architecture: {n_params / 1e9:.2f} B parameters on {torch.cuda.get_device_name()} "
          f"in {init_s:.1f} s", flush=True)

    cfg = TrainConfig(author=AUTHOR, base_model="llama-3.1-8b-random", dataset_dir=str(work / "data"),
                      output_dir=str(work / "out"), gpus_per_worker=1,
                      sft={"max_steps": args.sft_steps, "batch_size": args.batch, "max_length": args.max_length,
                           "learning_rate": 1e-4},
                      dpo={"max_steps": args.dpo_steps, "batch_size": max(1, args.batch // 2),
                           "max_length": args.max_length})
    torch.cuda.reset_peak_memory_stats()
    metrics = train(cfg.model_dump(), model=model, tokenizer=tokenizer)
    tokens_per_s = metrics["sft_tokens"] / metrics["sft_seconds"] if metrics.get("sft_tokens") else None
    report = {
        "gpu": torch.cuda.get_device_name(), "parameters": n_params, "dtype": "bfloat16", "lora_r": cfg.lora.r,
        "batch": args.batch, "max_length": args.max_length, **metrics,
        "sft_tokens_per_s": round(tokens_per_s, 1) if tokens_per_s else None,
        # Model FLOPs: 6 N per token (forward + backward) by the usual convention; with LoRA the frozen
        # weights need no weight gradients, so the work actually done is nearer 4 N per token.
        "mfu_6n": round(6 * n_params * tokens_per_s / H200_BF16_PEAK, 4) if tokens_per_s else None,
        "mfu_4n": round(4 * n_params * tokens_per_s / H200_BF16_PEAK, 4) if tokens_per_s else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
    }
    print(json.dumps(report, indent=2), flush=True)
    Path(args.out, "gpu_train_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
