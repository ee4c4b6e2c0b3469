"""Run the training function on Ray Train: a TorchTrainer with N workers (CPU or GPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .config import TrainConfig
from .sft_dpo import train


def _worker(config: dict) -> None:
    train(config)


def check_resources(cfg: TrainConfig, resources: dict) -> None:
    """Refuse before starting what the cluster cannot run, naming the fix."""
    gpus_needed = cfg.workers * cfg.gpus_per_worker
    if gpus_needed > resources.get("GPU", 0):
        raise ValueError(f"{cfg.workers} workers x {cfg.gpus_per_worker} GPUs need {gpus_needed} GPUs; the Ray "
                         f"cluster has {int(resources.get('GPU', 0))}: lower workers/gpus_per_worker "
                         "(gpus_per_worker 0 trains on CPU)")
    cpus_needed = cfg.workers * (cfg.threads_per_worker if not cfg.gpus_per_worker else 1)
    if cpus_needed > resources.get("CPU", 0):
        raise ValueError(f"{cfg.workers} workers x {cfg.threads_per_worker} threads need {cpus_needed} CPUs; the "
                         f"Ray cluster has {int(resources.get('CPU', 0))}: lower workers or threads_per_worker")


def run(cfg: TrainConfig, storage_path: str, name: str = "twin-train") -> dict:
    """SFT + DPO on Ray Train; returns the last reported metrics."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Each ray.train.report() waits for the controller's poll (2 s by default): poll faster.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=True, configure_logging=False)
    check_resources(cfg, ray.cluster_resources())
    per_worker = {"CPU": 1 if cfg.gpus_per_worker else cfg.threads_per_worker}
    if cfg.gpus_per_worker:
        per_worker["GPU"] = cfg.gpus_per_worker
    trainer = TorchTrainer(
        _worker, train_loop_config=cfg.model_dump(),
        torch_config=TorchConfig(backend="nccl" if cfg.gpus_per_worker else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpus_per_worker > 0,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(storage_path=storage_path, name=name))
    result = trainer.fit()
    if result.error:
        raise result.error
    # Rank 0 writes the adapter and its metrics to output_dir (a shared or object-store-backed path
    # on a multi-node cluster); Ray's own result keeps only what came with checkpoints.
    metrics_file = Path(cfg.output_dir) / "metrics.json"
    return json.loads(metrics_file.read_text()) if metrics_file.exists() else dict(result.metrics or {})
