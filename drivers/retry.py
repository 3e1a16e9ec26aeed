"""The one low-level retry policy: retry ``StorageError``s whose ``retryable`` is true.

Drivers wrap each single SDK call (not whole transfers) with :func:`retrying`; broken read
streams are reopened by ``StorageDriver.open`` with the same attempts and :func:`pause`.
SDK-internal retries are switched off in every driver so that attempts do not multiply.
"""

import time
from collections.abc import Callable
from typing import TypeVar

import tenacity

from drivers.backoff import Backoff
from drivers.errors import StorageError

T = TypeVar("T")

ATTEMPTS = 5
BACKOFF = Backoff(initial=0.1, maximum=5.0, jitter=0.1)


def is_retryable(error: BaseException) -> bool:
    return isinstance(error, StorageError) and error.retryable


_policy = tenacity.Retrying(
    retry=tenacity.retry_if_exception(is_retryable),
    stop=tenacity.stop_after_attempt(ATTEMPTS),
    wait=BACKOFF.tenacity_wait(),
    reraise=True,
)


def retrying(call: Callable[[], T]) -> T:
    """Run ``call``, retrying retryable storage errors with jittered exponential back-off.

    Raises the last error once attempts run out, and any non-retryable error at once.
    """
    return _policy.copy()(call)


def after_failure(error: StorageError, failures: int) -> int:
    """Called in an ``except`` block with the ``failures`` so far: the count with this one,
    after pausing its back-off. Raises ``error`` when it is not retryable or the attempts have
    run out."""
    failures += 1
    if not is_retryable(error) or failures >= ATTEMPTS:
        raise error
    pause(failures)
    return failures


def pause(failures: int) -> None:
    """Sleep the back-off that follows the ``failures``-th consecutive failure (1-based)."""
    time.sleep(BACKOFF.delay(failures))
