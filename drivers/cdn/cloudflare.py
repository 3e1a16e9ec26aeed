"""Cloudflare: purge by URL through the v4 API, with an API token.

One batch is one request::

    POST {endpoint}/zones/{zoneid}/purge_cache
    Authorization: Bearer {apitoken}
    Content-Type: application/json

    {"files": ["https://registry-eu.example.com/v2/app/manifests/1.0", ...]}

The answer must be ``{"success": true, ...}``; ``success: false`` is a permanent error carrying
the ``errors`` list's messages. Cloudflare takes 30 URLs per request on most plans (more on
Enterprise): ``batchsize``.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from drivers.cdn.base import Purger, PurgeError
from drivers.cdn.httpapi import check_batch, check_endpoint, redact, send
from drivers.parameters import parse_parameters

DEFAULT_ENDPOINT = "https://api.cloudflare.com/client/v4"
DEFAULT_BATCH_SIZE = 30
PARAMETERS: dict[str, type] = {"zoneid": str, "apitoken": str, "endpoint": str, "batchsize": int}
LIMITS = {"batchsize": (1, 500)}


def error_text(body: bytes) -> str:
    """The messages of a Cloudflare answer's ``errors`` list (``code: message; ...``)."""
    errors = json.loads(body).get("errors") or []
    return "; ".join(f"{item.get('code')}: {item.get('message')}" if isinstance(item, dict)
                     else str(item) for item in errors)


class CloudflarePurger(Purger):
    """The URLs of one Cloudflare zone, purged with an API token allowed to purge the zone."""

    kind = "cloudflare"

    def __init__(self, zone_id: str, api_token: str, *, endpoint: str = DEFAULT_ENDPOINT,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__()
        self.zone_id = zone_id
        self._api_token = api_token
        self.endpoint = endpoint
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, params: dict) -> CloudflarePurger:
        config = parse_parameters(params, PARAMETERS, limits=LIMITS,
                                  required=("zoneid", "apitoken"))
        return cls(config["zoneid"], config["apitoken"],
                   endpoint=check_endpoint("endpoint", config.get("endpoint", DEFAULT_ENDPOINT)),
                   batch_size=config.get("batchsize", DEFAULT_BATCH_SIZE))

    def describe(self) -> str:
        return f"cloudflare:{self.zone_id}"

    def purge(self, urls: list[str], batch_id: str | None = None) -> None:
        check_batch(self, urls)
        if not urls:
            return
        url = f"{self.endpoint}/zones/{quote(self.zone_id, safe='')}/purge_cache"
        headers = {"Authorization": f"Bearer {self._api_token}", "Content-Type": "application/json",
                   "Accept": "application/json"}
        body = send(self, "POST", url, headers=headers, body=json.dumps({"files": urls}).encode(),
                    secrets=(self._api_token,), error_text=error_text)
        try:
            answer = json.loads(body)
            success = answer.get("success") is True
            text = "" if success else error_text(body)
        except (ValueError, AttributeError):
            success, text = False, "not a JSON object"
        if not success:
            message = f"{self.describe()}: POST {url}: success false: {text}"
            raise PurgeError(redact(message, (self._api_token,)), retryable=False)
