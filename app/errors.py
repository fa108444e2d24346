"""Errors a user can cause; each maps to one HTTP status and carries a message written for them."""

from __future__ import annotations


class AppError(Exception):
    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(AppError):
    """The request cannot be carried out as asked (bad field, unknown model, out-of-range block)."""

    status_code = 422


class NotFound(AppError):
    status_code = 404


class Forbidden(AppError):
    """Refused whoever asks this way (a write from another site's page without its CSRF token)."""

    status_code = 403


class Conflict(AppError):
    """The request is well-formed but the thing it acts on is in the wrong state."""

    status_code = 409


class Unavailable(AppError):
    """The worker did not answer in time."""

    status_code = 503


class WorkerFailed(Exception):
    """A bug of ours in the worker: not the user's doing, so a 500 (the server log has the traceback)."""
