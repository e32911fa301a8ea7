"""Errors a user can cause. The CLI prints their message as one line and exits non-zero."""


class ActorcastError(Exception):
    """Base of every error the user can fix; the message says what is wrong and what to do."""


class ConfigError(ActorcastError, ValueError):
    """A configuration value is invalid or conflicts with another (raised at construction time)."""


class InputError(ActorcastError, ValueError):
    """Input data (audio, image, video, tensor) is unusable: wrong shape, rate, NaN, empty, corrupt."""


class TooLargeError(InputError):
    """Input over a size or length limit (a body, a picture's pixels, an audio's seconds): the live server
    answers it with HTTP 413."""
