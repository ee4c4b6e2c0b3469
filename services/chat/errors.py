"""Chat domain errors (mapped to status codes in services/gateway/status.py)."""


class InvalidChatRequest(Exception):
    """No twin named, no question, a conversation that does not end with the user."""
