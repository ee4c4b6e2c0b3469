"""SFT then DPO with a LoRA adapter: the training function each Ray Train worker runs.

Read top to bottom: threads and seed, model and tokenizer, the LoRA adapter, SFT on (instruction
-> the author's text) in the serving framing, DPO on (author's text > base model's answer), save
the adapter (and optionally the merged model), report metrics. Runs as well without Ray (the
GPU check and single-process runs call `train` directly).

Facts this relies on (trl 1.16, transformers 5.2x): TRL configs take `max_length` and
`processing_class=`, need `use_cpu=True` on CPU; DPO with `ref_model=None` on a PEFT model uses the
adapter-disabled model as its reference, so no second copy of the weights is held.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from pathlib import Path

from llm_twin import prompts

from .config import TrainConfig
from .datasets import load

log = logging.getLogger(__name__)

def sft_records(author: str, rows: list[dict], specials: frozenset[str] = frozenset()) -> list[dict]:
    """Prompt/completion pairs in the serving framing (llm_twin.prompts): loss on the answer only.
    ``specials``: the tokenizer's control tokens, kept as text in the author's writing (as in serving)."""
    out = []
    for row in rows:
        messages = prompts.training_example(author, prompts.as_text(row["instruction"], specials),
                                            prompts.as_text(row["answer"], specials))
        out.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return out


def dpo_records(author: str, rows: list[dict], specials: frozenset[str] = frozenset()) -> list[dict]:
    def text(value: str) -> str:
        return prompts.as_text(value, specials)

    return [{"prompt": prompts.chat_messages(author, [{"role": "user", "content": text(r["instruction"])}]),
             "chosen": [{"role": "assistant", "content": text(r["chosen"])}],
             "rejected": [{"role": "assistant", "content": text(r["rejected"])}]} for r in rows]


def _in_ray_train() -> bool:
    try:
        import ray.train

        return ray.train.get_context().get_world_size() >= 1
    except Exception:  # noqa: BLE001 - not inside a Ray Train worker
        return False


def _report(metrics: dict, checkpoint_dir: Path | None = None) -> None:
    """To Ray Train when running under it (with the adapter as a checkpoint in Ray's storage,
    local or s3); printed otherwise."""
    if _in_ray_train():
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)
        return
    log.info("metrics %s", json.dumps(metrics))  # the caller gets them returned and says them


def _quiet(trainer) -> None:
    """One metrics line per stage (reported below) instead of a log dict per step."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def four_bit_config(cfg: TrainConfig, on_gpu: bool, loaded: bool = False):
    """QLoRA (``lora.quantization: 4bit``): the base model's weights in 4-bit NF4 with double
    quantization, computing in bf16 (the QLoRA paper's recipe). None for plain LoRA; a ValueError
    naming the fix where this worker cannot do it."""
    if cfg.lora.quantization != "4bit":
        return None
    if not on_gpu:
        raise ValueError("lora.quantization 4bit (QLoRA) needs a CUDA GPU on every training worker and this one has "
                         "none: train on GPU workers (gpusPerWorker >= 1) or with lora.quantization none")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("lora.quantization 4bit (QLoRA) needs the bitsandbytes package on the training workers: "
                         "`pip install bitsandbytes` in the training image, or train with lora.quantization none")
    if loaded:
        raise ValueError("lora.quantization 4bit loads the base model itself: pass its path, not a loaded model")
    import torch
    from transformers import BitsAndBytesConfig

    # 4-bit values packed in bf16 storage: what lets ZeRO-3 flatten and shard them like the rest
    # (transformers' documented QLoRA + DeepSpeed recipe); the same memory either way.
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16)


def _report_to(cfg: TrainConfig, rank: int) -> list[str]:
    """Rank 0 logs each trainer's steps through transformers' own MLflow integration, as a child run
    (``sft``, ``dpo``) of the pipeline's run; the other ranks and untracked runs log nowhere."""
    if not cfg.tracking_uri or rank != 0:
        return []
    from llm_twin.tracking import twin_name

    os.environ.pop("MLFLOW_RUN_ID", None)  # a run id would make each trainer resume that run instead
    os.environ.update({"MLFLOW_TRACKING_URI": cfg.tracking_uri, "MLFLOW_EXPERIMENT_NAME": twin_name(cfg.author),
                       "MLFLOW_TAGS": json.dumps({"twin": cfg.author, **({"mlflow.parentRunId": cfg.tracking_run}
                                                                           if cfg.tracking_run else {})}),
                       "MLFLOW_FLATTEN_PARAMS": "1", "MLFLOW_NESTED_RUN": "0", "HF_MLFLOW_LOG_ARTIFACTS": "0"})
    return ["mlflow"]


def train(config: dict, model=None, tokenizer=None) -> dict:
    """One worker's training run. ``config`` is a TrainConfig as a dict (Ray passes plain data);
    ``model``/``tokenizer`` may be given already loaded (the GPU check builds a random 8B model
    in place rather than writing and reading 16 GB)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    cfg = TrainConfig(**config)
    on_gpu = cfg.gpus_per_worker > 0 and torch.cuda.is_available()
    quantization = four_bit_config(cfg, on_gpu, loaded=model is not None)  # before any loading: it may refuse
    if not on_gpu:
        torch.set_num_threads(cfg.threads_per_worker)
    torch.manual_seed(cfg.seed)
    rank = int(os.environ.get("RANK", "0"))
    output = Path(cfg.output_dir)

    tokenizer = tokenizer or AutoTokenizer.from_pretrained(cfg.base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if on_gpu else torch.float32
    if cfg.deepspeed and cfg.deepspeed.zero_stage == 3:
        import deepspeed

        deepspeed.init_distributed()  # before from_pretrained, so ZeRO-3 can partition the weights
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=dtype,
                                                     **({"quantization_config": quantization} if quantization else {}))
    if quantization:
        from peft import prepare_model_for_kbit_training

        # Norms and the head in float32, inputs requiring grad: what a 4-bit base needs to train stably.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                             target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM"))
    common = {"report_to": _report_to(cfg, rank), "use_cpu": not on_gpu, "logging_steps": 1, "save_strategy": "no",
              "seed": cfg.seed, "bf16": on_gpu, "dataloader_num_workers": 0,
              "remove_unused_columns": True,
              "include_num_input_tokens_seen": True, "disable_tqdm": True}

    started = time.perf_counter()
    sft_rows = load(cfg.dataset_dir, "train.jsonl")
    sft_args = SFTConfig(output_dir=str(output / "sft"), run_name="sft", num_train_epochs=cfg.sft.epochs,
                         max_steps=cfg.sft.max_steps,
                         learning_rate=cfg.sft.learning_rate, per_device_train_batch_size=cfg.sft.batch_size,
                         max_length=cfg.sft.max_length, completion_only_loss=True,
                         deepspeed=cfg.deepspeed.as_dict(cfg.sft.batch_size) if cfg.deepspeed else None, **common)
    sft = SFTTrainer(model=model, args=sft_args, train_dataset=Dataset.from_list(sft_records(cfg.author, sft_rows,
                                                                                             prompts.control_tokens(tokenizer))),
                     processing_class=tokenizer)
    _quiet(sft)
    sft_result = sft.train()
    losses = [log["loss"] for log in sft.state.log_history if "loss" in log]
    metrics = {"stage": "sft", "sft_loss_first": losses[0] if losses else None,
               "sft_loss_last": losses[-1] if losses else None, "sft_steps": sft_result.global_step,
               "sft_tokens": int(sft.state.num_input_tokens_seen or 0),
               "sft_seconds": round(time.perf_counter() - started, 2),
               "sft_samples_per_s": round(sft_result.metrics.get("train_samples_per_second", 0.0), 3)}
    _report(metrics)
    model = sft.model

    if cfg.dpo.enabled:
        pairs = load(cfg.dataset_dir, "preference.jsonl")
        if pairs:
            started_dpo = time.perf_counter()
            dpo_args = DPOConfig(output_dir=str(output / "dpo"), run_name="dpo", num_train_epochs=cfg.dpo.epochs,
                                 max_steps=cfg.dpo.max_steps, learning_rate=cfg.dpo.learning_rate,
                                 per_device_train_batch_size=cfg.dpo.batch_size, max_length=cfg.dpo.max_length,
                                 beta=cfg.dpo.beta,
                                 deepspeed=cfg.deepspeed.as_dict(cfg.dpo.batch_size) if cfg.deepspeed else None,
                                 **common)
            dpo = DPOTrainer(model=model, ref_model=None, args=dpo_args,
                             train_dataset=Dataset.from_list(dpo_records(cfg.author, pairs,
                                                                         prompts.control_tokens(tokenizer))),
                                                                         processing_class=tokenizer)
            _quiet(dpo)
            dpo_result = dpo.train()
            dpo_losses = [log["loss"] for log in dpo.state.log_history if "loss" in log]
            metrics.update(stage="dpo", dpo_loss_first=dpo_losses[0] if dpo_losses else None,
                           dpo_loss_last=dpo_losses[-1] if dpo_losses else None, dpo_steps=dpo_result.global_step,
                           dpo_seconds=round(time.perf_counter() - started_dpo, 2))
            _report(metrics)
            model = dpo.model

    adapter_dir = None
    if rank == 0:
        adapter_dir = output / "adapter"
        model.save_pretrained(adapter_dir)
        tokenizer.save_pretrained(adapter_dir)
        if cfg.merge:
            merged = model.merge_and_unload()
            merged.save_pretrained(output / "merged")
            tokenizer.save_pretrained(output / "merged")
        (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if _in_ray_train():
        _report({**metrics, "stage": "done"}, adapter_dir)
    return metrics
