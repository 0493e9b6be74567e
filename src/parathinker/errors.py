"""Typed exceptions. Each carries one line a user can act on; the CLI prints it and exits non-zero."""

from __future__ import annotations


class ParaThinkerError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class ConfigError(ParaThinkerError, ValueError):
    """A parameter or option has a value that cannot work."""


class CheckpointError(ParaThinkerError):
    """A model directory is missing, unreadable or of an unsupported architecture."""


class TokenizerError(ParaThinkerError):
    """The tokenizer lacks something the request needs (e.g. control tokens)."""


class PromptTooLongError(ParaThinkerError, ValueError):
    """A prompt (plus its budgets) does not fit in the model's context."""


class OutOfPagesError(ParaThinkerError, MemoryError):
    """The KV page pool cannot hold a request even when empty."""


class DataError(ParaThinkerError, ValueError):
    """An input data file (JSONL, benchmark) is malformed."""
