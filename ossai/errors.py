"""The small error hierarchy shared by the CLI (one line on stderr, exit 1) and the server (one status).

Anything a user can cause — a bad path, a broken checkpoint, a bad request — raises one of these with a
message that reads as a sentence. Bugs stay ordinary exceptions.
"""

from __future__ import annotations


class OssaiError(Exception):
    """Base class; `status` is the HTTP status the server maps it to."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param  # the request field at fault, for HTTP error bodies


class BadRequest(OssaiError, ValueError):
    status = 400
    code = "invalid_request_error"


class NotFound(OssaiError):
    status = 404
    code = "not_found"


class Conflict(OssaiError):
    """The request is fine but the state does not allow it now (a model in use cannot be removed)."""

    status = 409
    code = "conflict"


class TooLarge(OssaiError):
    """Something the client sent is over a size limit (a stored conversation, a message)."""

    status = 413
    code = "too_large"


class Busy(OssaiError):
    status = 503
    code = "busy"


class ModelLoadError(OssaiError):
    """A checkpoint that cannot be loaded: missing files, wrong shapes or dtypes, corrupt safetensors."""

    status = 400
    code = "model_load_error"


class ContextLengthError(BadRequest):
    code = "context_length_exceeded"
