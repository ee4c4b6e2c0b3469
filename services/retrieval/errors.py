"""Retrieval domain errors (mapped to gRPC/HTTP status codes at the transport edge)."""


class RetrievalError(Exception):
    pass


class InvalidQuery(RetrievalError):
    """Empty or oversized query, bad top_k, unknown category or strategy."""


class UnknownAuthor(RetrievalError):
    """No twin (author) of that name has anything in the index."""


class StoreUnavailable(RetrievalError):
    """The vector store cannot be opened or reached; the message names the fix."""
