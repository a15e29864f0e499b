"""Errors of the search publishing backend, all :class:`~lmindexer.errors.UserError` subclasses.

They carry messages a user can act on (which option, which index, where the alias points now); the underlying
client exception stays attached as ``__cause__`` for debugging.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmindexer.errors import ConfigError, UserError

if TYPE_CHECKING:
    from lmindexer.search.results import BulkResult


class SearchError(UserError):
    """The search engine cannot be reached, refused a request, or is not in the state an operation needs."""


class SearchConfigError(SearchError, ConfigError):
    """A search option is invalid."""


class InvalidDocumentError(SearchError):
    """An item or ID-table row cannot become a search document."""


class PublishError(SearchError):
    """A publish did not complete. The alias was left where it was; ``result`` holds the per-document outcome."""

    def __init__(
        self,
        message: str,
        *,
        index: str | None = None,
        alias: str | None = None,
        live_index: str | None = None,
        index_deleted: bool = False,
        result: BulkResult | None = None,
    ) -> None:
        super().__init__(message)
        self.index = index
        self.alias = alias
        self.live_index = live_index
        self.index_deleted = index_deleted
        self.result = result
