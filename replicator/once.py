"""Work done once per key however many threads ask for it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


class Once:
    """The first caller of :meth:`run` for a key makes the call; callers of the same key,
    at the same time or later, wait for it and get its result or its exception."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: dict[Hashable, Future] = {}

    def run(self, key: Hashable, call: Callable[[], T]) -> T:
        with self._lock:
            future = self._futures.get(key)
            first = future is None
            if first:
                future = self._futures[key] = Future()
        if first:
            try:
                future.set_result(call())
            except BaseException as error:
                future.set_exception(error)
        return future.result()
