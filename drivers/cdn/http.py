"""Self-hosted edges (Varnish and the like): every node is asked directly, one request per URL.

``method: PURGE`` (the default)::

    PURGE /v2/app/manifests/1.0 HTTP/1.1
    Host: registry-eu.example.com            (the URL's host, so the node hashes the same object)

``method: BAN``::

    BAN /v2/app/manifests/1.0 HTTP/1.1
    Host: registry-eu.example.com
    X-Ban-Url: ^/v2/app/manifests/1\\.0$      (the path and query, regex-escaped, anchored)
    X-Ban-Host: registry-eu.example.com

``softpurge: true`` adds ``Fastly-Soft-Purge: 1``. Every node must answer 2xx for every URL
(``registry-cdn.vcl`` answers 200 to a PURGE whether or not the object was cached); a node is
never reached through a proxy. A failing node does not stop the others from being purged; the
batch then fails, retryable only if every failure was (5xx, 408, 429, connection errors).
"""

from __future__ import annotations

import re

from drivers.cdn.base import Purger, PurgeError
from drivers.cdn.httpapi import check_batch, check_choice, check_endpoint, send
from drivers.errors import ConfigError
from drivers.parameters import parse_parameters

METHODS = ("PURGE", "BAN")
DEFAULT_BATCH_SIZE = 100
PARAMETERS: dict[str, type] = {"nodes": list, "method": str, "softpurge": bool, "batchsize": int}
LIMITS = {"batchsize": (1, 10000)}


class HttpPurger(Purger):
    """Cache nodes (``http://10.0.0.5:6081``) that accept ``PURGE`` or ``BAN`` from this host."""

    kind = "http"

    def __init__(self, nodes: list[str], *, method: str = "PURGE", soft: bool = False,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__()
        self.nodes = list(nodes)
        self.method = method
        self.soft = soft
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, params: dict) -> HttpPurger:
        config = parse_parameters(params, PARAMETERS, limits=LIMITS, required=("nodes",))
        nodes = [check_endpoint(f"nodes[{index}]", node) for index, node in enumerate(config["nodes"])]
        if len(set(nodes)) != len(nodes):
            raise ConfigError("nodes", "lists a node twice")
        method = check_choice({"method": config.get("method", "PURGE").upper()}, "method", METHODS)
        return cls(nodes, method=method, soft=config.get("softpurge", False),
                   batch_size=config.get("batchsize", DEFAULT_BATCH_SIZE))

    def describe(self) -> str:
        return f"http:{','.join(self.nodes)}"

    def calls_for(self, urls: int) -> int:
        """One request per URL and node."""
        return urls * len(self.nodes)

    def purge(self, urls: list[str], batch_id: str | None = None) -> None:
        targets = check_batch(self, urls)
        failures: list[PurgeError] = []
        for node in self.nodes:
            try:
                for target in targets:
                    headers = {"Host": target.host}
                    if self.method == "BAN":
                        headers["X-Ban-Url"] = f"^{re.escape(target.request_target)}$"
                        headers["X-Ban-Host"] = target.host
                    if self.soft:
                        headers["Fastly-Soft-Purge"] = "1"
                    send(self, self.method, node + target.request_target, headers=headers, direct=True)
            except PurgeError as error:
                failures.append(error)
        if failures:
            raise PurgeError("; ".join(str(error) for error in failures),
                             retryable=all(error.retryable for error in failures),
                             retry_after=max((error.retry_after for error in failures
                                              if error.retry_after is not None), default=None))
