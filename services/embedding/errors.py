"""Embedding domain errors (mapped to status codes in services/gateway/status.py)."""


class InvalidEmbeddingRequest(Exception):
    """No texts, too many, an empty one, an oversized one."""
