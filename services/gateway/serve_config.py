"""The platform's Ray Serve configuration, built in one place.

`twin serve` (local), the operator's RayService for each twin and the chart's shared platform
RayService all render :func:`serve_config`; the chart's template is generated from it (`make crd`)
and a test renders the chart and compares. Kept free of heavy imports so the operator can read it.
"""

from __future__ import annotations

APP_NAME = "twin"
IMPORT_PATH = "services.gateway.server:build_app"
GRPC_PORT = 9000
HTTP_PORT = 8000
# What Ray Serve's gRPC proxy registers (grpc_options.grpc_servicer_functions).
GRPC_SERVICER_FUNCTIONS = [
    # First: it makes the proxy's streams cancel their replica call when a client cancels.
    "services.gateway.grpc_ingress.cancel_streams_on_client_cancel",
    "twin.v1.crawler_pb2_grpc.add_CrawlerServiceServicer_to_server",
    "twin.v1.embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server",
    "twin.v1.retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server",
    "twin.v1.generation_pb2_grpc.add_GenerationServiceServicer_to_server",
    "twin.v1.chat_pb2_grpc.add_ChatServiceServicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]
# The RayJob entrypoint that takes a twin from sources to an evaluated model (`twin pipeline`).
PIPELINE_COMMAND = ["twin", "pipeline", "--config", "/etc/llm-twin/twinmodel.json"]


def serve_config(args: dict, *, http_host: str = "0.0.0.0", http_port: int = HTTP_PORT, grpc_port: int = GRPC_PORT,
                 request_timeout_s: float = 300.0, generation_gpus: float | str = 0,
                 generation_autoscaling: dict | None = None, max_queued_requests: int | str = 100,
                 generation_max_ongoing_requests: int = 64) -> dict:
    """The Serve config (a RayService's serveConfigV2). ``args`` are Settings fields handed to
    :func:`services.gateway.server.build_app`; the Generation deployment gets its GPUs and, in a
    cluster, its autoscaling (min_replicas, max_replicas, target_ongoing_requests)."""
    # Overload answers at once (503 / RESOURCE_EXHAUSTED) instead of queueing without end.
    gateway = {"name": "Gateway", "max_queued_requests": max_queued_requests}
    generation: dict = {"name": "Generation", "max_ongoing_requests": generation_max_ongoing_requests,
                        "max_queued_requests": max_queued_requests}
    if generation_autoscaling:
        generation["autoscaling_config"] = dict(generation_autoscaling)
    generation["ray_actor_options"] = {"num_gpus": generation_gpus, "num_cpus": 1}
    return {
        "grpc_options": {"port": grpc_port, "grpc_servicer_functions": list(GRPC_SERVICER_FUNCTIONS),
                         "request_timeout_s": request_timeout_s},
        "http_options": {"host": http_host, "port": http_port, "request_timeout_s": request_timeout_s},
        "applications": [{"name": APP_NAME, "import_path": IMPORT_PATH, "route_prefix": "/", "args": dict(args),
                          "deployments": [gateway, generation]}],
    }
