"""``Once``: one call per key however many threads ask; with ``forget``, nothing kept after."""

import threading

import pytest

from replicator.once import Once


def test_callers_at_the_same_time_share_one_call_and_later_ones_its_result():
    once, calls, started, release = Once(), [], threading.Event(), threading.Event()

    def call():
        calls.append(1)
        started.set()
        release.wait(10)
        return "digest"

    results = []
    first = threading.Thread(target=lambda: results.append(once.run("k", call)))
    first.start()
    started.wait(10)
    second = threading.Thread(target=lambda: results.append(once.run("k", call)))
    second.start()
    release.set()
    first.join()
    second.join()
    assert results == ["digest", "digest"] and once.run("k", call) == "digest"
    assert len(calls) == 1


def test_forget_keeps_nothing_once_a_call_returned_but_keeps_a_failure():
    once, calls = Once(forget=True), []

    def call():
        calls.append(1)
        return len(calls)

    assert (once.run("k", call), once.run("k", call)) == (1, 2)
    assert once._futures == {}

    def fail():
        calls.append(1)
        raise ValueError("junk link")

    for _ in range(2):
        with pytest.raises(ValueError):
            once.run("bad", fail)
    assert len(calls) == 3 and list(once._futures) == ["bad"]
