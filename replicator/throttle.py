"""A token bucket that paces the bytes streamed into one destination.

Every copy of a pass into the destination takes its chunks' sizes from the same bucket, so
their sum keeps to ``rate`` bytes per second however many run at once. The bucket starts
empty and holds at most one second's worth, so no burst exceeds that; a chunk larger than what
the bucket holds is let through and paid for by waiting (the debt is shared, so later chunks
wait for it too). ``clock`` and ``sleep`` are injectable for tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = rate
        self._clock = clock
        self._sleep = sleep
        self._tokens = 0.0
        self._updated = clock()
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        """Take ``n`` bytes' worth, waiting until the rate allows them; whether it waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait:
            self._sleep(wait)
        return wait > 0
