"""Listings: the catalog of repositories and a repository's tags, paged by ``Link`` headers."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urljoin

import httpx

from drivers.errors import NotFound, StorageError, TransientError
from drivers.registry.client import InsufficientScope, Session

CATALOG_SCOPE = "registry:catalog:*"


class CatalogUnavailable(StorageError):
    """The registry offers no catalog to these credentials (``_catalog`` answers 401
    ``insufficient_scope``, 403 or 404): the repositories must be named instead."""


def pull_scope(repository: str) -> tuple[str, ...]:
    return (f"repository:{repository}:pull",)


def next_page(response: httpx.Response) -> str | None:
    """The absolute URL of the ``Link: <...>; rel="next"`` page, if the answer has one."""
    for link in response.headers.get_list("Link", split_commas=True):
        target, _, params = link.partition(";")
        if 'rel="next"' in params.replace(" ", "") or "rel=next" in params.replace(" ", ""):
            return urljoin(str(response.request.url), target.strip().strip("<>"))
    return None


class Tags(Session):
    """Catalog and tag listings (``list`` requests)."""

    def catalog(self, page_size: int | None = None) -> Iterator[list[str]]:
        """Yield pages of repository names, in the registry's order (lexical in Distribution).

        ``page_size`` asks for at most that many names per page (``n``; the registry's default
        otherwise). Raises ``CatalogUnavailable`` when the registry offers no catalog, and
        otherwise ``AccessDenied`` or ``TransientError`` after retries.
        """
        try:
            yield from self._pages(self.endpoint("/v2/_catalog"), "repositories", (CATALOG_SCOPE,),
                                   page_size)
        except (InsufficientScope, NotFound) as error:
            raise CatalogUnavailable(f"{self.describe()}: no catalog ({error})") from None

    def tag_list(self, repository: str, page_size: int | None = None) -> Iterator[list[str]]:
        """Yield pages of ``repository``'s tags (``page_size`` as for :meth:`catalog`).

        Raises ``NotFound`` when the repository does not exist, ``AccessDenied`` when the
        credentials may not pull from it, ``TransientError`` after retries.
        """
        yield from self._pages(self.endpoint(f"/v2/{repository}/tags/list"), "tags",
                               pull_scope(repository), page_size)

    def _pages(self, url: str | None, field: str, scopes: tuple[str, ...],
               page_size: int | None) -> Iterator[list[str]]:
        params = {"n": str(page_size)} if page_size else None
        while url:
            response = self.call("GET", url, kind="list", scopes=scopes, params=params)
            try:
                names = response.json().get(field) or []
            except (ValueError, AttributeError) as error:
                raise TransientError(f"{self.where('GET', url)}: not a JSON listing") from error
            if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
                raise TransientError(f"{self.where('GET', url)}: {field} is not a list of names")
            if names:
                yield names
            url, params = next_page(response), None
