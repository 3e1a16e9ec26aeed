"""Reading a manifest through a CDN edge, as users pull it, to tell which digest it serves.

One ``GET`` with every manifest media type accepted (Distribution 2.8 hides OCI manifests
otherwise), through the environment's proxy settings as a user's client would go. The digest
is the SHA-256 of the body the edge answers, whatever its headers say.
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request

from drivers.errors import NotFound, TransientError
from drivers.registry.manifest import ACCEPT, MAX_MANIFEST_SIZE

TIMEOUT = 30.0
"""Seconds to connect to the edge, and then to wait on it."""


def edge_manifest_digest(url: str, timeout: float = TIMEOUT) -> str:
    """The digest of the manifest the edge serves at ``url``. Raises ``NotFound`` for a 404 and
    ``TransientError`` for another answer, a body over 4 MiB or an edge that cannot be reached."""
    request = urllib.request.Request(url, headers={"Accept": ACCEPT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(MAX_MANIFEST_SIZE + 1)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 404:
            raise NotFound(f"GET {url}: HTTP 404") from None
        raise TransientError(f"GET {url}: HTTP {error.code}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TransientError(f"GET {url}: {type(reason).__name__}: {reason}") from None
    if len(body) > MAX_MANIFEST_SIZE:
        raise TransientError(f"GET {url}: the answer is over {MAX_MANIFEST_SIZE} bytes")
    return "sha256:" + hashlib.sha256(body).hexdigest()
