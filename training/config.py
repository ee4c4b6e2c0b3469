"""Training and pipeline configuration, validated before any work starts; every error names the fix.

The hyperparameter sections (SFT, DPO, LoRA, ZeRO, workers) and the dataset limits are the TwinModel's own classes
(`llm_twin.twinmodel`): the resource, these configs and the CLI's flags cannot drift apart.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llm_twin.twinmodel import DatasetLimits, Gate, Sources, TrainSettings, TwinModelSpec


class TrainConfig(TrainSettings):
    """One training run: the hyperparameters plus what it reads and writes."""

    model_config = ConfigDict(extra="forbid")
    author: str = Field(min_length=1, description="Whose twin this is (the author's name).")
    base_model: str = Field(min_length=1, description="Base model: a folder or a Hugging Face id in the local cache.")
    dataset_dir: str = Field(min_length=1, description="A dataset built by `twin dataset build`.")
    output_dir: str = Field(min_length=1, description="Where the adapter (and the merged model) are written.")
    merge: bool = Field(False, description="Also save the base model with the adapter merged in.")
    seed: int = Field(0, ge=0, description="Seed for data order and initialisation.")
    tracking_uri: str | None = Field(None, description="MLflow server rank 0 logs the SFT and DPO steps to.")
    tracking_run: str | None = Field(None, description="The MLflow run (a pipeline's) those step runs belong to.")

    @model_validator(mode="after")
    def _no_merge_into_4bit(self):
        if self.merge and self.lora.quantization == "4bit":
            raise ValueError("merge with lora.quantization 4bit would merge the adapter into 4-bit weights: serve the "
                             "adapter (the default) or merge it onto the full-precision base model afterwards")
        return self


class DatasetSettings(DatasetLimits):
    """The TwinModel's dataset limits (one definition) with the teacher as flat CLI-friendly fields."""

    model_config = ConfigDict(extra="forbid")
    teacher_url: str | None = Field(None, description="OpenAI-compatible endpoint writing the instructions "
                                                      "(its key: TWIN_TEACHER_KEY); default: the local model.")
    teacher_model: str = Field("gpt-4o-mini", min_length=1, description="The teacher's model name.")


class JudgeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    judge_url: str | None = Field(None, description="OpenAI-compatible LLM judge for gate.min_judge_style (its key: "
                                                    "TWIN_JUDGE_KEY); default: TWIN_JUDGE_URL.")
    judge_model: str | None = Field(None, description="The judge's model name; default: TWIN_JUDGE_MODEL.")


class StorageSettings(BaseModel):
    """Where the pipeline reads and writes; None keeps what the settings (TWIN_*) say."""

    model_config = ConfigDict(extra="forbid")
    warehouse_uri: str | None = None
    artifact_uri: str | None = None
    milvus_uri: str | None = None
    collection: str | None = None


class PipelineConfig(BaseModel):
    """`twin pipeline`: everything it does, resolved before it starts (`--print-config` shows it)."""

    model_config = ConfigDict(extra="forbid")
    author: str = Field(min_length=1)
    sources: Sources = Field(default_factory=Sources, description="Crawled first (empty: use what is crawled).")
    base_model: str | None = Field(None, description="Default: the serving model (SmolLM2-135M-Instruct).")
    version: str | None = Field(None, description="Registry version (the operator passes its stage hash).")
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    gate: Gate = Field(default_factory=Gate)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    use_ray: bool = Field(True, description="Train on Ray Train workers (False: in this process).")

    @classmethod
    def from_twinmodel(cls, document: dict) -> PipelineConfig:
        """The operator's rendered TwinModel ({"name", "spec", "stageHashes"}) -> the pipeline's config.
        Every spec field the pipeline acts on is read here; the rest (serving, refresh, image,
        suspend) belong to the operator."""
        spec = TwinModelSpec.parse(document.get("spec"))
        teacher, judge = spec.dataset.teacher, spec.evaluation.judge
        return cls(
            author=spec.author.name, sources=spec.author.sources, base_model=spec.training.base_model,
            version=(document.get("stageHashes") or {}).get("evaluation"),
            dataset=DatasetSettings(**spec.dataset.model_dump(include=set(DatasetLimits.model_fields)),
                                    teacher_url=teacher.endpoint if teacher else None,
                                    **({"teacher_model": teacher.model} if teacher else {})),
            train=TrainSettings.model_validate(spec.training.model_dump(include=set(TrainSettings.model_fields))),
            gate=spec.evaluation.gate,
            judge=JudgeSettings(judge_url=str(judge.endpoint), judge_model=judge.model) if judge else JudgeSettings(),
            storage=StorageSettings(warehouse_uri=spec.storage.warehouse_uri or None,
                                    artifact_uri=spec.storage.artifact_uri or None,
                                    milvus_uri=spec.vector_store.milvus_uri,
                                    collection=spec.vector_store.collection))
