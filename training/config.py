"""Training configuration, validated before any work starts; every error names the fix."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(16, ge=1, le=512, description="LoRA rank.")
    alpha: int = Field(32, ge=1, le=4096, description="LoRA scaling (alpha / r multiplies the update).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: list[str] = Field(["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1,
                                      description="Module names the adapter wraps (attention projections).")


class DeepSpeedSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    zero_stage: int = Field(2, ge=0, le=3, description="ZeRO stage 0-3.")
    offload: bool = Field(False, description="Offload optimizer state (and parameters at stage 3) to CPU.")

    @model_validator(mode="after")
    def _offload_needs_stage(self):
        if self.offload and self.zero_stage < 2:
            raise ValueError("deepspeed.offload needs zero_stage 2 or 3: raise zero_stage or turn offload off")
        return self

    def as_dict(self, batch_size: int) -> dict:
        """A DeepSpeed config for the HF Trainer ('auto' lets it fill in what it knows)."""
        zero: dict = {"stage": self.zero_stage}
        if self.offload:
            zero["offload_optimizer"] = {"device": "cpu"}
            if self.zero_stage == 3:
                zero["offload_param"] = {"device": "cpu"}
        return {"zero_optimization": zero, "train_micro_batch_size_per_gpu": batch_size,
                "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
                "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}


class StageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: float = Field(1.0, gt=0, le=50, description="Passes over the training set.")
    max_steps: int = Field(-1, ge=-1, description="Stop after this many optimizer steps (-1: epochs decide).")
    learning_rate: float = Field(2e-4, gt=0, le=1e-2, description="Peak learning rate.")
    batch_size: int = Field(4, ge=1, le=512, description="Examples per device per step.")
    max_length: int = Field(512, ge=32, le=32768, description="Longest example in tokens (longer ones are cut).")


class DPOSettings(StageSettings):
    enabled: bool = Field(True, description="Run DPO after SFT.")
    learning_rate: float = Field(5e-6, gt=0, le=1e-2, description="Peak learning rate.")
    beta: float = Field(0.1, gt=0, le=1, description="DPO temperature: how far the twin may move from the reference.")


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    author: str = Field(min_length=1, description="Whose twin this is (the author's name).")
    base_model: str = Field(min_length=1, description="Base model: a folder or a Hugging Face id in the local cache.")
    dataset_dir: str = Field(min_length=1, description="A dataset built by `twin dataset build`.")
    output_dir: str = Field(min_length=1, description="Where the adapter (and the merged model) are written.")
    num_workers: int = Field(1, ge=1, le=64, description="Ray Train workers (data-parallel).")
    gpus_per_worker: int = Field(0, ge=0, le=8, description="GPUs per worker; 0 trains on CPU.")
    threads_per_worker: int = Field(1, ge=1, le=256, description="Torch threads per CPU worker (oversubscription is slow).")
    sft: StageSettings = StageSettings()
    dpo: DPOSettings = DPOSettings()
    lora: LoraSettings = LoraSettings()
    deepspeed: DeepSpeedSettings | None = Field(None, description="DeepSpeed ZeRO; none trains with plain DDP.")
    merge: bool = Field(False, description="Also save the base model with the adapter merged in.")
    seed: int = Field(0, description="Seed for data order and initialisation.")

    @model_validator(mode="after")
    def _consistent(self):
        if self.deepspeed and self.deepspeed.offload and self.gpus_per_worker == 0:
            raise ValueError("deepspeed.offload only helps on GPU: set gpus_per_worker >= 1 or turn offload off")
        return self
