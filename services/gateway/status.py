"""Every domain error mapped to one gRPC status code and one HTTP status, in one place."""

from __future__ import annotations

import grpc
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from services.chat.errors import InvalidChatRequest
from services.crawler.errors import CrawlError, InvalidTarget
from services.embedding.errors import InvalidEmbeddingRequest
from services.generation.errors import InvalidGenerationRequest, ModelUnavailable, NoTwinModel
from services.retrieval.errors import InvalidQuery, StoreUnavailable, UnknownAuthor

from .auth import MisdirectedRequest, PermissionDenied, Unauthenticated
from .fairness import RateLimited


class InvalidRequest(Exception):
    """A request the gateway itself rejects (malformed JSON, wrong types, unknown fields)."""


class NotFound(Exception):
    """Something a request names that is not there (a response id for feedback)."""


class ReplicaLost(Exception):
    """The replica working on a request stopped (killed, crashed, its node gone): 503 /
    UNAVAILABLE, retry; Serve starts a new one."""


class TooLarge(Exception):
    """A request over a size limit (413 / RESOURCE_EXHAUSTED); the message names the limit's setting."""


STATUS: dict[type[BaseException], tuple[grpc.StatusCode, int]] = {
    InvalidRequest: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    InvalidChatRequest: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    InvalidGenerationRequest: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    InvalidQuery: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    InvalidEmbeddingRequest: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    InvalidTarget: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    TooLarge: (grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, 401),
    MisdirectedRequest: (grpc.StatusCode.PERMISSION_DENIED, 421),
    PermissionDenied: (grpc.StatusCode.PERMISSION_DENIED, 403),
    RateLimited: (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    UnknownAuthor: (grpc.StatusCode.NOT_FOUND, 404),
    NotFound: (grpc.StatusCode.NOT_FOUND, 404),
    NoTwinModel: (grpc.StatusCode.NOT_FOUND, 404),
    CrawlError: (grpc.StatusCode.UNAVAILABLE, 502),
    ModelUnavailable: (grpc.StatusCode.UNAVAILABLE, 503),
    StoreUnavailable: (grpc.StatusCode.UNAVAILABLE, 503),
    # A deployment's queue is full (max_queued_requests): overload is answered at once.
    BackPressureError: (grpc.StatusCode.RESOURCE_EXHAUSTED, 503),
    # A replica died under the request, or none is there yet: retry (Serve replaces it).
    ReplicaLost: (grpc.StatusCode.UNAVAILABLE, 503),
    RayActorError: (grpc.StatusCode.UNAVAILABLE, 503),
    ActorDiedError: (grpc.StatusCode.UNAVAILABLE, 503),
    ActorUnavailableError: (grpc.StatusCode.UNAVAILABLE, 503),
    DeploymentUnavailableError: (grpc.StatusCode.UNAVAILABLE, 503),
}
RETRY_AFTER_S = {ReplicaLost: 5, RayActorError: 5, ActorDiedError: 5, ActorUnavailableError: 5,
                 DeploymentUnavailableError: 5, BackPressureError: 1}


def retry_after(exc: BaseException) -> int | None:
    """Seconds a client should wait before retrying (the Retry-After header), None: don't retry."""
    if isinstance(exc, RateLimited):
        return max(1, int(exc.retry_after))
    for cls in type(exc).__mro__:
        if cls in RETRY_AFTER_S:
            return RETRY_AFTER_S[cls]
    return None


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, int, str] | None:
    """(gRPC code, HTTP status, message) for a domain error, None for anything else (a bug: 500).

    Errors raised in another deployment arrive wrapped by Ray in a subclass of their own type,
    so the MRO walk finds them; the message is the original one."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            code, http = STATUS[cls]
            cause = getattr(exc, "cause", None)
            message = str(cause if isinstance(cause, cls) else exc).strip()
            if cls in RETRY_AFTER_S and cls not in (BackPressureError, ReplicaLost):
                message = ("a replica stopped while working on this request (Serve is starting another): retry in "
                           f"{RETRY_AFTER_S[cls]} s")
            return code, http, message.splitlines()[-1] if "\n" in message else message
    return None
