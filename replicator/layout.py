"""Distribution's storage layout: registry concepts <-> storage keys. Pure: no I/O.

Keys are relative to a driver's root directory::

    docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data
    docker/registry/v2/repositories/<name>/_layers/sha256/<hex>/link
    docker/registry/v2/repositories/<name>/_manifests/revisions/sha256/<hex>/link
    docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link
    docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/index/sha256/<hex>/link
    docker/registry/v2/repositories/<name>/_uploads/...        (never replicated)

Names, tags and digests follow Distribution's grammar; anything else raises ``LayoutError``
(a ``ValueError``) so a hostile name can never become a key outside its place.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

ROOT = "docker/registry/v2/"
BLOBS_PREFIX = ROOT + "blobs/"
REPOSITORIES_PREFIX = ROOT + "repositories/"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
NAME_MAX = 255
LINK_SIZE = len("sha256:") + 64


class LayoutError(ValueError):
    """A repository name, tag, digest or link file that breaks Distribution's grammar."""


def check_name(name: str) -> str:
    if len(name) > NAME_MAX or not _NAME.fullmatch(name):
        raise LayoutError(f"invalid repository name {name!r}")
    return name


def check_tag(tag: str) -> str:
    if not _TAG.fullmatch(tag):
        raise LayoutError(f"invalid tag {tag!r}")
    return tag


def check_digest(digest: str) -> str:
    if not _DIGEST.fullmatch(digest):
        raise LayoutError(f"invalid or unsupported digest {digest!r} (sha256 only)")
    return digest


def _hex(digest: str) -> str:
    return check_digest(digest).split(":", 1)[1]


def blob_key(digest: str) -> str:
    hexdigest = _hex(digest)
    return f"{BLOBS_PREFIX}sha256/{hexdigest[:2]}/{hexdigest}/data"


def repository_prefix(name: str) -> str:
    return f"{REPOSITORIES_PREFIX}{check_name(name)}/"


def layer_link_key(name: str, digest: str) -> str:
    return f"{repository_prefix(name)}_layers/sha256/{_hex(digest)}/link"


def revision_link_key(name: str, digest: str) -> str:
    return f"{repository_prefix(name)}_manifests/revisions/sha256/{_hex(digest)}/link"


def tag_prefix(name: str, tag: str) -> str:
    return f"{repository_prefix(name)}_manifests/tags/{check_tag(tag)}/"


def tag_current_key(name: str, tag: str) -> str:
    return tag_prefix(name, tag) + "current/link"


def tag_index_key(name: str, tag: str, digest: str) -> str:
    return f"{tag_prefix(name, tag)}index/sha256/{_hex(digest)}/link"


def link_bytes(digest: str) -> bytes:
    return check_digest(digest).encode()


def parse_link(data: bytes) -> str:
    """The digest a link file holds. Raises ``LayoutError`` unless it is exactly ``sha256:<hex>``."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise LayoutError("link file is not ASCII") from None
    if len(data) != LINK_SIZE or not _DIGEST.fullmatch(text):
        raise LayoutError(f"link file content is not a sha256 digest ({len(data)} bytes)")
    return text


@dataclass(frozen=True)
class BlobData:
    digest: str


@dataclass(frozen=True)
class LayerLink:
    name: str
    digest: str


@dataclass(frozen=True)
class RevisionLink:
    name: str
    digest: str


@dataclass(frozen=True)
class TagCurrent:
    name: str
    tag: str


@dataclass(frozen=True)
class TagIndex:
    name: str
    tag: str
    digest: str


Entry = BlobData | LayerLink | RevisionLink | TagCurrent | TagIndex

_BLOB_KEY = re.compile(r"blobs/sha256/([a-f0-9]{2})/([a-f0-9]{64})/data")
_REPO_KEY = re.compile(
    r"repositories/(?P<name>.+?)/(?:"
    r"_layers/sha256/(?P<layer>[a-f0-9]{64})/link"
    r"|_manifests/revisions/sha256/(?P<revision>[a-f0-9]{64})/link"
    r"|_manifests/tags/(?P<tag>[^/]+)/(?:current/link|index/sha256/(?P<index>[a-f0-9]{64})/link)"
    r")")


def parse_key(key: str) -> Entry | None:
    """Classify a storage key; ``None`` for keys that are not replicated (uploads, others).

    Keys whose repository name or tag breaks the grammar are also ``None``: they can be
    neither read as registry content nor written safely.
    """
    if not key.startswith(ROOT):
        return None
    rest = key[len(ROOT):]
    blob = _BLOB_KEY.fullmatch(rest)
    if blob:
        return BlobData("sha256:" + blob[2]) if blob[2].startswith(blob[1]) else None
    match = _REPO_KEY.fullmatch(rest)
    if not match or not _NAME.fullmatch(match["name"]) or len(match["name"]) > NAME_MAX:
        return None
    name = sys.intern(match["name"])
    if match["layer"]:
        return LayerLink(name, "sha256:" + match["layer"])
    if match["revision"]:
        return RevisionLink(name, "sha256:" + match["revision"])
    tag = match["tag"]
    if not _TAG.fullmatch(tag):
        return None
    if match["index"]:
        return TagIndex(name, sys.intern(tag), "sha256:" + match["index"])
    return TagCurrent(name, sys.intern(tag))
