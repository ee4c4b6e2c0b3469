"""How the platform is started, in one place: the Serve import path and the gRPC servicer list that
`twin serve`, the helm chart's RayService and the operator's RayServices all use.
Kept free of heavy imports so the operator can read it."""

APP_NAME = "twin"
IMPORT_PATH = "services.gateway.server:build_app"
GRPC_PORT = 9000
HTTP_PORT = 8000
# What Ray Serve's gRPC proxy registers (grpc_options.grpc_servicer_functions).
GRPC_SERVICER_FUNCTIONS = [
    "twin.v1.crawler_pb2_grpc.add_CrawlerServiceServicer_to_server",
    "twin.v1.embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server",
    "twin.v1.retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server",
    "twin.v1.generation_pb2_grpc.add_GenerationServiceServicer_to_server",
    "twin.v1.chat_pb2_grpc.add_ChatServiceServicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]
# The RayJob entrypoint that takes a twin from sources to an evaluated model (`twin pipeline`).
PIPELINE_COMMAND = ["twin", "pipeline", "--config", "/etc/llm-twin/twinmodel.json"]
