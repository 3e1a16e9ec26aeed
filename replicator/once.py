"""Work done once per key however many threads ask for it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


class Once:
    """The first caller of :meth:`run` for a key makes the call; callers of the same key,
    at the same time or later, wait for it and get its result or its exception. With
    ``forget``, a key is forgotten once its call returns (callers already waiting still get
    the result; a later one calls again; a failure is kept): for callers that keep the result
    themselves, so that memory does not grow with the keys (a finished call's future holds
    about 1.6 KB)."""

    def __init__(self, forget: bool = False) -> None:
        self._lock = threading.Lock()
        self._futures: dict[Hashable, Future] = {}
        self._forget = forget

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
            else:
                if self._forget:
                    with self._lock:
                        del self._futures[key]
        return future.result()
