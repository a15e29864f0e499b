"""Exceptions a user can act on.

Anything raised as a :class:`UserError` is reported by the CLI as one line, without a traceback: it means the input,
the options or the environment are wrong, not the code.
"""


class UserError(Exception):
    """Base class for errors caused by input, options or environment."""


class ConfigError(UserError):
    """An option or configuration value is invalid."""


class CatalogError(UserError):
    """A catalogue cannot be read, or (in strict mode) contains invalid rows."""


class SnapshotError(UserError):
    """A snapshot directory is missing, incomplete or incompatible."""


class IdTableError(UserError):
    """An ID table is missing, malformed or belongs to another ID space."""


class RetrieverError(UserError):
    """A retriever refresh cannot go on: unreadable queries, a step out of order, or a live model that moved."""


class RetrieverGateFailed(RetrieverError):
    """A newly trained retriever failed a gate; the live retriever stays in charge."""
