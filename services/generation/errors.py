"""Generation domain errors (mapped to gRPC/HTTP status codes in services/gateway/status.py)."""


class GenerationError(Exception):
    pass


class InvalidGenerationRequest(GenerationError):
    """Empty or oversized prompt, bad role, max_tokens/temperature/top_p out of range."""


class ModelUnavailable(GenerationError):
    """The model could not be loaded or the engine stopped; the message names the fix."""


class NoTwinModel(GenerationError):
    """A request names a twin that has no servable fine-tuned model (adapter) to answer with."""
