"""The platform's Serve application: one ingress (HTTP and gRPC) over the data plane, and
:func:`build_app` (`services.gateway.server:build_app`, the import path every serve config names).

One application with five deployments (Gateway -> Crawler, Retrieval, Embedding, Generation);
the Gateway wires the handles into the transport-free data plane (`dataplane.py`), under the
HTTP routes (`http_api.py`) and the gRPC methods it inherits (`grpc_api.py`).
"""

from pathlib import Path

from ray import serve

from llm_twin.config import Settings
from llm_twin.evaluation.judge import LLMJudge
from llm_twin.prompt_traces import PromptTraces
from services.crawler.server import CrawlerDeployment
from services.embedding.server import EmbeddingDeployment
from services.generation.server import GenerationDeployment
from services.retrieval.server import RetrievalDeployment

from .clients import GenerationClient, HandleClient
from .dataplane import DataPlane
from .grpc_api import GrpcApi
from .http_api import http
from .metrics import ServeMetrics
from .observe import Observer
from .response_ids import ResponseIds

# No `from __future__ import annotations`: serve.ingress resolves FastAPI annotations at runtime.


@serve.deployment(name="Gateway", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress(http)
class Gateway(GrpcApi):
    def __init__(self, settings: dict, crawler, retrieval, embedding, generation):
        settings = Settings(**settings)
        prompt_log = PromptTraces.from_settings(settings)
        if prompt_log is not None:
            prompt_log.start()
        observer = Observer(prompt_log, ServeMetrics(), LLMJudge.from_settings(settings),
                            settings.judge.sample_ratio, ResponseIds.from_settings(settings))
        self.plane = DataPlane(settings, crawler=HandleClient(crawler), retrieval=HandleClient(retrieval),
                               embedding=HandleClient(embedding), generation=GenerationClient(generation),
                               observer=observer)


DEPLOYMENTS = {"Gateway": Gateway, "Crawler": CrawlerDeployment, "Retrieval": RetrievalDeployment,
               "Embedding": EmbeddingDeployment, "Generation": GenerationDeployment}


def build_app(args: dict | None = None, deployments: list[dict] | None = None):
    """The platform application. ``args`` are Settings fields (the RayService's ``args``); anything
    not given comes from TWIN_* environment variables, then the defaults. ``deployments`` are a
    serve config's per-deployment options (a RayService's Serve applies them itself; `twin serve`
    passes them here)."""
    settings = Settings(**(args or {}))
    if settings.gateway.trust_client_trace != Settings().gateway.trust_client_trace:
        raise ValueError("trust_client_trace is read by Serve's proxies, which see no application args: set "
                         "TWIN_TRUST_CLIENT_TRACE in the environment of the Ray processes instead")
    config = settings.model_copy(update={"data_dir": Path(settings.data_dir).resolve()}).model_dump(mode="json")
    options = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in deployments or []}
    unknown = set(options) - set(DEPLOYMENTS)
    if unknown:
        raise ValueError(f"no deployment named {', '.join(sorted(unknown))}; the platform has {', '.join(DEPLOYMENTS)}")
    bound = {name: d.options(**options[name]) if name in options else d for name, d in DEPLOYMENTS.items()}
    embedding = bound["Embedding"].bind(config)
    retrieval = bound["Retrieval"].bind(config, embedding)
    generation = bound["Generation"].bind(config)
    crawler = bound["Crawler"].bind(config, retrieval)
    return bound["Gateway"].bind(config, crawler, retrieval, embedding, generation)
