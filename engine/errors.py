"""The one error type for problems a user can cause and fix."""


class EngineError(ValueError):
    """Bad input or an unusable file/model; the message is written for the user."""
