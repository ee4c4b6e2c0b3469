"""Training benchmark (part of `make bench`): Ray Train's samples/s divided by plain TRL's, same
data, same model (SmolLM2-135M-Instruct, LoRA SFT), same threads, measured in one run (goal >= 0.8).
Printed twice: inside the training loop (what Ray costs per step) and end to end (with Ray's
start and the workers' setup, which short runs feel most)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

STEPS = 12


def synthetic_dataset(folder: Path, rows: int, articles_per_answer: int = 1) -> None:
    """Instruction/answer rows from the sample corpus, no teacher needed (benchmarks, GPU check)."""
    from .sample_corpus import POSTS

    posts = list(POSTS.values())
    train, pairs = [], []
    for i in range(rows):
        chosen = "\n\n".join(" ".join(posts[(i + k) % len(posts)][1]) for k in range(articles_per_answer))
        rejected = "\n\n".join(" ".join(posts[(i + k + 7) % len(posts)][1]) for k in range(articles_per_answer))
        row = {"doc_id": f"d{i % 5}", "passage_id": f"p{i}", "answer": chosen,
               "instruction": f"What do you think about {posts[i % len(posts)][0].lower()}?"}
        train.append(row)
        pairs.append({**row, "chosen": chosen, "rejected": rejected})
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (("train.jsonl", train), ("test.jsonl", train[:4]), ("preference.jsonl", pairs)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in data))


def run() -> None:
    from llm_twin.config import Settings
    from services.generation.model_store import resolve_model
    from training import trainer
    from training.config import TrainConfig
    from training.sft_dpo import train

    from .sample_corpus import AUTHOR

    settings = Settings()
    model = resolve_model(settings.generation.model, settings.data_dir)
    threads = settings.torch_threads or 2
    with tempfile.TemporaryDirectory(prefix="twin-bench-train-") as tmp:
        synthetic_dataset(Path(tmp) / "data", rows=STEPS * 2)

        def config(name: str) -> TrainConfig:
            return TrainConfig(author=AUTHOR, base_model=model, dataset_dir=f"{tmp}/data", output_dir=f"{tmp}/{name}",
                               threads_per_worker=threads, dpo={"enabled": False}, lora={"r": 8, "alpha": 16},
                               sft={"max_steps": STEPS, "batch_size": 2, "max_length": 256})

        print("training: plain TRL in this process ...", flush=True)
        started = time.perf_counter()
        plain = train(config("plain").model_dump())
        plain_wall = time.perf_counter() - started
        print("training: the same on Ray Train (1 worker) ...", flush=True)
        started = time.perf_counter()
        ray_metrics = trainer.run(config("ray"), f"{tmp}/ray", name="bench")
        ray_wall = time.perf_counter() - started
    samples = STEPS * 2
    print(f"training: Ray Train {ray_metrics['sft_samples_per_s']:.2f} samples/s / plain TRL "
          f"{plain['sft_samples_per_s']:.2f} samples/s = "
          f"{ray_metrics['sft_samples_per_s'] / plain['sft_samples_per_s']:.2f} "
          "in the training loop (goal >= 0.8)")
    print(f"training: end to end {samples / ray_wall:.2f} / {samples / plain_wall:.2f} samples/s = "
          f"{plain_wall / ray_wall:.2f} (Ray's start and worker setup included, {STEPS} steps)")


if __name__ == "__main__":
    run()
