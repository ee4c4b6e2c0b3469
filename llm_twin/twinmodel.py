"""The TwinModel spec: the one typed contract for a twin, from its sources to serving.

Everything else is derived from these classes: the CRD's openAPIV3Schema (`make crd`, see
`llm_twin/crd.py`), the operator's parsing and validation, the pipeline's configuration
(`training.config.PipelineConfig.from_twinmodel`) and the training flags of the `twin` CLI. A field
added here reaches all of them; a test fails when one of them does not read it.

Field names are snake_case in Python and camelCase in the resource (an alias generator maps them),
so the same classes serve `TrainConfig(lora={"r": 8})` and `spec.training.lora.targetModules`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .engines import DEFAULT_ENGINE, ENGINES, EngineName

GROUP, VERSION, PLURAL, KIND = "llmtwin.dev", "v1alpha1", "twinmodels", "TwinModel"
DURATION = re.compile(r"^(\d+(s|m|h|d))+$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class InvalidSpec(ValueError):
    """The spec cannot be used; the message names the field and the fix."""


def _cel(*rules: tuple[str, str]) -> dict:
    """CEL rules for the CRD (x-kubernetes-validations); the same rules are model validators."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in rules]}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True,
                              validate_default=True)


# -- training hyperparameters (shared with training.config.TrainConfig and the CLI) -------------------
class SFTSettings(Section):
    """Supervised fine-tuning on (instruction, the author's own answer) pairs."""

    epochs: float = Field(3.0, ge=0.1, le=20, description="Passes over the training set.")
    max_steps: int = Field(-1, ge=-1, description="Stop after this many optimizer steps (-1: epochs decide).")
    learning_rate: float = Field(2e-4, gt=0, le=0.01, description="Peak learning rate.")
    batch_size: int = Field(4, ge=1, le=512, description="Examples per device per step.")
    max_length: int = Field(2048, ge=64, le=32768, description="Longest example in tokens (longer ones are cut).")


class DPOSettings(SFTSettings):
    """Direct preference optimisation after SFT: the author's text preferred over the base model's."""

    enabled: bool = Field(True, description="Run DPO after SFT.")
    epochs: float = Field(1.0, ge=0.1, le=20, description="Passes over the preference pairs.")
    learning_rate: float = Field(5e-6, gt=0, le=0.01, description="Peak learning rate.")
    beta: float = Field(0.1, gt=0, le=1, description="DPO temperature: how far the twin may move from the reference.")


class LoraSettings(Section):
    """The LoRA adapter trained on the base model."""

    r: int = Field(16, ge=1, le=512, description="LoRA rank.")
    alpha: int = Field(32, ge=1, le=1024, description="LoRA scaling (alpha / r multiplies the update).")
    dropout: float = Field(0.05, ge=0, le=0.9, description="Dropout on the LoRA branch.")
    target_modules: list[str] = Field(["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1, max_length=64,
                                      description="Module names the adapter wraps (attention projections).")
    quantization: Literal["none", "4bit"] = Field(
        "none", description="4bit: QLoRA, the frozen base model held in 4-bit NF4 while the adapter trains "
                            "(bitsandbytes, CUDA GPU workers); none: plain LoRA on bf16/float32 weights.")


class DeepSpeedSettings(Section):
    """DeepSpeed ZeRO (absent: plain DDP)."""

    model_config = ConfigDict(json_schema_extra=_cel(("!self.offload || self.zeroStage >= 2",
                                                      "CPU offload needs ZeRO stage 2 or 3")))
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="ZeRO stage 0-3.")
    offload: bool = Field(False, description="Offload optimizer state (and parameters at stage 3) to CPU.")

    @model_validator(mode="after")
    def _offload_needs_stage(self):
        if self.offload and self.zero_stage < 2:
            raise ValueError("offload needs zeroStage 2 or 3: raise zeroStage or turn offload off")
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


class TrainSettings(Section):
    """How the twin is trained: Ray Train workers, SFT then DPO, the adapter, ZeRO."""

    model_config = ConfigDict(json_schema_extra=_cel((
        "!has(self.lora) || !has(self.lora.quantization) || self.lora.quantization != '4bit' || "
        "(has(self.gpusPerWorker) && self.gpusPerWorker >= 1)",
        "lora.quantization 4bit (QLoRA) needs GPU workers: set gpusPerWorker >= 1")))

    workers: int = Field(1, ge=1, le=64, description="Ray Train workers (data-parallel).")
    gpus_per_worker: int = Field(0, ge=0, le=8, description="GPUs per worker; 0 trains on CPU.")
    threads_per_worker: int = Field(1, ge=1, le=256,
                                    description="Torch threads per CPU worker (oversubscription is slow).")
    sft: SFTSettings = Field(default_factory=SFTSettings)
    dpo: DPOSettings = Field(default_factory=DPOSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    deepspeed: DeepSpeedSettings | None = None

    @model_validator(mode="after")
    def _offload_on_gpu(self):
        if self.deepspeed and self.deepspeed.offload and self.gpus_per_worker == 0:
            raise ValueError("deepspeed.offload only helps on GPU: set gpusPerWorker >= 1 or turn offload off")
        return self

    @model_validator(mode="after")
    def _qlora_on_gpu(self):
        if self.lora.quantization == "4bit" and self.gpus_per_worker == 0:
            raise ValueError("lora.quantization 4bit (QLoRA) needs GPU workers (bitsandbytes' 4-bit kernels are "
                             "CUDA-only): set gpusPerWorker >= 1, or quantization none for plain LoRA")
        return self


# -- the resource -------------------------------------------------------------------------------------
class SecretKeyRef(Section):
    """A key of a Secret in the TwinModel's namespace; its value reaches the jobs as environment."""

    name: str = Field(min_length=1, max_length=253, description="The Secret's name.")
    key: str = Field(min_length=1, max_length=253, description="The key within the Secret.")


class LinkedInExport(Section):
    """A LinkedIn data export zip in object storage."""

    uri: str = Field(pattern=r"^(s3|gs|file)://",
                     description="fsspec URI of the export zip, e.g. s3://bucket/export.zip.")


HttpUrl = Annotated[str, Field(pattern=r"^https?://")]
# An export or a document in object storage, copied into the job before it is read.
ArchiveUri = Annotated[str, Field(pattern=r"^(s3|gs|file)://\S+$", max_length=2048)]
# git is cloned over https only: ssh/git remotes reach hosts the crawler's address guard cannot pin.
HttpsGitUrl = Annotated[str, Field(pattern=r"^https://[^/\s]+/\S+$", max_length=2048)]


class Sources(Section):
    """Where the author's writing is crawled from."""

    model_config = ConfigDict(json_schema_extra=_cel((
        "size(self.feeds) + size(self.pages) + size(self.repositories) + size(self.archives) > 0 "
        "|| has(self.linkedinExport)",
        "give at least one source (feeds, pages, repositories, archives or linkedinExport)")))
    feeds: list[HttpUrl] = Field([], max_length=100, description="RSS/Atom feeds: every entry's page is crawled.")
    pages: list[HttpUrl] = Field([], max_length=1000, description="Article pages or sitemaps.")
    repositories: list[HttpsGitUrl] = Field([], max_length=100,
                                            description="Git repositories (https:// clone URLs only).")
    linkedin_export: LinkedInExport | None = None
    archives: list[ArchiveUri] = Field(
        [], max_length=100, description="Exports and documents in object storage (s3://, gs://, file://): Medium, "
        "Substack and X archives, PDF, DOCX; each copied into the job and recognised from its content.")

    def targets(self) -> list[tuple[str, list[str]]]:
        """(crawler source type, targets) per kind of source, in crawl order."""
        groups = [("feed", self.feeds), ("auto", self.pages), ("git", self.repositories), ("archive", self.archives)]
        if self.linkedin_export:
            groups.append(("linkedin-export", [self.linkedin_export.uri]))
        return [(kind, list(items)) for kind, items in groups if items]


class Author(Section):
    name: str = Field(min_length=1, max_length=200, description="The author as written, e.g. Paul Iusztin.")
    sources: Sources = Field(default_factory=Sources)

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is blank: whose writing is this twin made of?")
        return value

    @model_validator(mode="after")
    def _has_sources(self):
        if not self.sources.targets():
            raise ValueError("spec.author.sources needs at least one of feeds, pages, repositories, archives, "
                             "linkedinExport")
        return self


class Storage(Section):
    """Under the operator's storage root, each twin has its own prefix, <root>/<namespace>/<name>/: a
    path elsewhere (another twin's) is refused with its path; empty paths are placed there."""

    warehouse_uri: str = Field("", max_length=1024, description="fsspec URI of the raw-document warehouse "
                               "(empty: <root>/<namespace>/<name>/warehouse).")
    artifact_uri: str = Field("", max_length=1024, description="Where datasets and models are stored "
                              "(empty: <root>/<namespace>/<name>/artifacts).")


class VectorStore(Section):
    milvus_uri: str = Field("http://milvus:19530", description="Milvus server URI.")
    collection: str = Field("twin_chunks", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Collection of chunks.")
    token_secret_ref: SecretKeyRef | None = Field(None, description="The Milvus token, from a Secret.")


class Teacher(Section):
    """An OpenAI-compatible endpoint writing the instructions (private data is masked first)."""

    endpoint: HttpUrl = Field(description="Base URL, e.g. https://api.openai.com/v1.")
    model: str = Field("gpt-4o-mini", min_length=1, description="The teacher model's name at that endpoint.")
    secret_ref: SecretKeyRef | None = Field(None, description="The endpoint's API key, from a Secret.")


class DatasetLimits(Section):
    """How a dataset is built from the author's text: the one definition for the TwinModel's
    spec.dataset and `twin dataset build` / `twin pipeline` (training.config.DatasetSettings)."""

    max_examples: int = Field(2000, ge=2, le=1_000_000, description="Most instruction examples built.")
    test_fraction: float = Field(0.2, ge=0.01, le=0.5, description="Share of documents held out for evaluation.")
    rejected_max_tokens: int = Field(160, ge=8, le=2048,
                                     description="Length of the base model's (rejected) answers in preference pairs.")


class Dataset(DatasetLimits):
    teacher: Teacher | None = Field(None, description="Default: the local base model writes the instructions.")


class Training(TrainSettings):
    gpus_per_worker: int = Field(1, ge=0, le=8, description="GPUs per worker (a cluster trains on GPUs; 0: CPU).")
    base_model: str = Field(min_length=1,
                            description="Hugging Face id or folder, e.g. meta-llama/Llama-3.1-8B-Instruct.")
    image: str = Field("ghcr.io/llm-twin/llm-twin:0.1.0", min_length=1, description="Image of the training job and "
                                                                                    "the serving cluster.")


class Gate(Section):
    """What a trained twin must show before it serves."""

    max_perplexity_ratio: float = Field(1.0, ge=0.1, le=2,
                                        description="twin perplexity / base perplexity must stay below this.")
    min_style_similarity: float = Field(0.0, ge=-1, le=1, description="The twin's answers' style similarity to the "
                                                                     "author's held-out answers must reach this.")
    min_judge_style: float | None = Field(None, ge=1, le=3, description="The LLM judge's mean style score (1-3) of the "
                                          "twin's held-out answers must reach this (needs evaluation.judge).")


class Judge(Section):
    """An OpenAI-compatible LLM judge (private data is masked first)."""

    endpoint: HttpUrl = Field(description="Base URL, e.g. https://api.openai.com/v1.")
    model: str = Field("gpt-4o-mini", min_length=1, description="The judge model's name at that endpoint.")
    secret_ref: SecretKeyRef | None = Field(None, description="The endpoint's API key, from a Secret.")


class Evaluation(Section):
    gate: Gate = Field(default_factory=Gate)
    judge: Judge | None = Field(None, description="Scores the twin's style for gate.minJudgeStyle.")

    @model_validator(mode="after")
    def _judge_for_the_gate(self):
        if self.gate.min_judge_style is not None and self.judge is None:
            raise ValueError("gate.minJudgeStyle needs a judge: set evaluation.judge (endpoint, model, secretRef)")
        return self


class Resources(Section):
    cpu: str = Field("2", description="CPU per serving worker.")
    memory: str = Field("8Gi", description="Memory per serving worker.")
    gpus: int = Field(0, ge=0, le=8, description="GPUs per serving worker.")


class Serving(Section):
    model_config = ConfigDict(json_schema_extra=_cel(("self.minReplicas <= self.maxReplicas",
                                                      "serving.minReplicas must not exceed serving.maxReplicas")))
    engine: EngineName = Field(DEFAULT_ENGINE, description="Generation engine: " + ", ".join(ENGINES) + ".")
    min_replicas: int = Field(0, ge=0, le=100, description="0 scales to zero when idle.")
    max_replicas: int = Field(2, ge=1, le=100, description="Most generation replicas.")
    target_ongoing_requests: int = Field(8, ge=1, le=1000, description="Autoscaling target per replica.")
    canary_percent: int = Field(0, ge=0, le=100, description="Traffic step of a new version (0: switch at once).")
    request_timeout_seconds: float = Field(300, gt=0, le=3600, description="End-to-end limit of one request.")
    max_queued_requests: int = Field(100, ge=1, le=100_000, description="Requests waiting per replica before new "
                                     "ones are refused at once (503 / RESOURCE_EXHAUSTED).")
    api_keys_secret: str = Field("", max_length=253, description="A Secret with the key api-keys.json (`twin keys "
                                 "create` with TWIN_API_KEYS_FILE set), labelled llmtwin.dev/twin-secret=true: who "
                                 "may call. Empty: every call is refused (a twin on a cluster never runs keyless).")
    key_max_concurrent: int = Field(16, ge=0, le=100_000, description="Requests one API key may have in flight per "
                                    "gateway replica (0: no limit); more get 429 / RESOURCE_EXHAUSTED.")
    key_requests_per_minute: int = Field(600, ge=0, le=10_000_000, description="Requests one API key may start a "
                                         "minute per gateway replica (0: no limit); more get 429 with Retry-After.")
    mask_pii: bool = Field(True, description="Mask e-mails, phones, keys... in the questions and answers the twin "
                           "records for monitoring.")
    resources: Resources = Field(default_factory=Resources)

    @model_validator(mode="after")
    def _replicas(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        return self


class Refresh(Section):
    """Keep the twin fresh: re-crawl the sources on a timer, retrain when enough has changed."""

    interval: str = Field("", pattern=r"^$|^([0-9]+(s|m|h|d))+$",
                          description="How often the sources are re-crawled, e.g. 24h or 1h30m (empty: never).")
    retrain_after_documents: int = Field(10, ge=1, le=1_000_000, description="New or changed documents (since the "
                                         "model being served was trained) that start a new training job.")

    @property
    def seconds(self) -> float | None:
        if not self.interval:
            return None
        return float(sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhd])", self.interval)))


class TwinModelSpec(Section):
    """A twin: whose writing, where it lives, how the model is trained, gated and served."""

    model_config = ConfigDict(json_schema_extra=_cel((
        "!has(self.serving) || self.serving.engine != 'tensorrt-llm' || "
        "(has(self.serving.resources) && self.serving.resources.gpus >= 1)",
        "serving.engine tensorrt-llm needs serving.resources.gpus >= 1")))
    suspend: bool = Field(False, description="Stop reconciling (no new jobs, nothing deleted) until set back to false.")
    author: Author
    storage: Storage = Field(default_factory=Storage)
    vector_store: VectorStore = Field(default_factory=VectorStore)
    dataset: Dataset = Field(default_factory=Dataset)
    training: Training
    evaluation: Evaluation = Field(default_factory=Evaluation)
    serving: Serving = Field(default_factory=Serving)
    refresh: Refresh = Field(default_factory=Refresh)

    @model_validator(mode="after")
    def _engine_resources(self):
        if self.serving.engine == "tensorrt-llm" and self.serving.resources.gpus < 1:
            raise ValueError("spec.serving.engine tensorrt-llm needs spec.serving.resources.gpus >= 1")
        return self

    @classmethod
    def parse(cls, spec: dict | None) -> TwinModelSpec:
        """The spec with defaults filled in; raises InvalidSpec naming each wrong field."""
        try:
            return cls.model_validate(spec or {})
        except ValidationError as exc:
            raise InvalidSpec("; ".join(describe(e, "spec") for e in exc.errors())) from None

    def as_resource(self) -> dict:
        """The spec as the resource spells it (camelCase, every default filled in)."""
        return self.model_dump(mode="json", by_alias=True)


def describe(error: dict, root: str) -> str:
    """One pydantic error as a sentence naming the field (``root.path.to.field``)."""
    loc = ".".join([root, *(str(p) for p in error["loc"])])
    message = error["msg"].removeprefix("Value error, ")
    kind = error["type"]
    if kind == "missing":
        return f"{loc} is required"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"{loc} must be one of {expected.replace(' or ', ', ')}, got {error.get('input')!r}"
    if kind == "extra_forbidden":
        return f"{loc} is not a field of this spec (check the spelling; see `kubectl explain twinmodel.spec`)"
    if message.startswith(root + "."):
        return message
    return f"{loc}: {message}"
