"""Coalesce bursts of hints into one call per key, on one worker thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)


class Debouncer:
    """Calls ``action(key)`` once a key has been quiet for ``quiet`` seconds, or ``max_delay``
    seconds after its first hint, whichever comes first. A key hinted while its action runs
    is called again afterwards. Exceptions from ``action`` are logged, never raised.
    """

    def __init__(self, action: Callable[[Hashable], object], quiet: float, max_delay: float):
        self.action = action
        self.quiet = quiet
        self.max_delay = max_delay
        self._due: dict[Hashable, tuple[float, float]] = {}
        self._condition = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="debouncer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def hint(self, key: Hashable) -> None:
        now = time.monotonic()
        with self._condition:
            first, _ = self._due.get(key, (now, now))
            self._due[key] = (first, now)
            self._condition.notify()

    def pending(self) -> int:
        with self._condition:
            return len(self._due)

    def stop(self) -> None:
        """Stop after the action under way; hints not yet due are dropped."""
        with self._condition:
            self._stopped = True
            self._condition.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _deadline(self, key: Hashable) -> float:
        first, last = self._due[key]
        return min(last + self.quiet, first + self.max_delay)

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._stopped:
                    now = time.monotonic()
                    due = [key for key in self._due if self._deadline(key) <= now]
                    if due:
                        key = min(due, key=self._deadline)
                        del self._due[key]
                        break
                    timeout = min((self._deadline(k) for k in self._due), default=now + 60) - now
                    self._condition.wait(timeout)
                if self._stopped:
                    return
            try:
                self.action(key)
            except Exception:
                log.exception("action for %r failed", key)
