"""Fastly: purge by URL, or by surrogate key, through the API with an API token.

``mode: url`` (the default) sends one request per URL (scheme dropped, path kept as in the URL)::

    POST {endpoint}/purge/registry-eu.example.com/v2/app/manifests/1.0
    Fastly-Key: {apitoken}

``mode: surrogatekey`` sends one request per batch of at most 256 keys, where **the key of a
URL is its path** (``/v2/app/manifests/1.0``, whatever the host)::

    POST {endpoint}/service/{serviceid}/purge
    Fastly-Key: {apitoken}
    Surrogate-Key: /v2/app/manifests/1.0 /v2/app/tags/list

so the service must tag each response with its path, e.g. in ``vcl_fetch``:
``set beresp.http.Surrogate-Key = req.url.path;``. ``softpurge: true`` adds
``Fastly-Soft-Purge: 1`` to every request (objects are marked stale, not removed).
"""

from __future__ import annotations

import json
from urllib.parse import quote

from drivers.cdn.base import Purger
from drivers.cdn.httpapi import check_batch, check_choice, check_endpoint, send
from drivers.errors import ConfigError
from drivers.parameters import parse_parameters

DEFAULT_ENDPOINT = "https://api.fastly.com"
MODES = ("url", "surrogatekey")
MAX_KEYS = 256
"""Surrogate keys Fastly purges in one request."""
DEFAULT_BATCH_SIZES = {"url": 30, "surrogatekey": MAX_KEYS}
PARAMETERS: dict[str, type] = {"serviceid": str, "apitoken": str, "softpurge": bool, "mode": str,
                               "endpoint": str, "batchsize": int}
LIMITS = {"batchsize": (1, 1000)}


def error_text(body: bytes) -> str:
    """A Fastly error answer's ``msg`` and ``detail``."""
    answer = json.loads(body)
    return ": ".join(str(answer[key]) for key in ("msg", "detail") if answer.get(key))


class FastlyPurger(Purger):
    """The URLs of one Fastly service, purged with an API token allowed to purge it."""

    kind = "fastly"

    def __init__(self, service_id: str, api_token: str, *, mode: str = "url", soft: bool = False,
                 endpoint: str = DEFAULT_ENDPOINT, batch_size: int | None = None) -> None:
        super().__init__()
        self.service_id = service_id
        self._api_token = api_token
        self.mode = mode
        self.soft = soft
        self.endpoint = endpoint
        self.batch_size = batch_size or DEFAULT_BATCH_SIZES[mode]

    @classmethod
    def from_config(cls, params: dict) -> FastlyPurger:
        config = parse_parameters(params, PARAMETERS, limits=LIMITS,
                                  required=("serviceid", "apitoken"))
        mode = check_choice(config, "mode", MODES)
        if mode == "surrogatekey" and config.get("batchsize", 0) > MAX_KEYS:
            raise ConfigError("batchsize", f"must be at most {MAX_KEYS} with mode surrogatekey")
        return cls(config["serviceid"], config["apitoken"], mode=mode,
                   soft=config.get("softpurge", False),
                   endpoint=check_endpoint("endpoint", config.get("endpoint", DEFAULT_ENDPOINT)),
                   batch_size=config.get("batchsize"))

    def describe(self) -> str:
        return f"fastly:{self.service_id}"

    def calls_for(self, urls: int) -> int:
        """One call per URL by URL, one per batch by surrogate key."""
        return urls if self.mode == "url" else super().calls_for(urls)

    def _post(self, url: str, **headers: str) -> None:
        headers = {"Fastly-Key": self._api_token, "Accept": "application/json", **headers}
        if self.soft:
            headers["Fastly-Soft-Purge"] = "1"
        send(self, "POST", url, headers=headers, secrets=(self._api_token,), error_text=error_text)

    def purge(self, urls: list[str], batch_id: str | None = None) -> None:
        targets = check_batch(self, urls)
        if self.mode == "url":
            for target in targets:
                self._post(f"{self.endpoint}/purge/{target.host}{target.request_target}")
        elif targets:
            keys = list(dict.fromkeys(target.path for target in targets))
            self._post(f"{self.endpoint}/service/{quote(self.service_id, safe='')}/purge",
                       **{"Surrogate-Key": " ".join(keys)})
