"""Whether a destination's sync windows are open at a moment: pure, no I/O.

A window is days of the week and a span of the day in a time zone (``config.Window``); a
span whose end is at or before its start wraps past midnight and belongs to the day it
starts on (``fri 22:00-02:00`` is open from Friday 22:00 to Saturday 02:00, local time).
No windows means always open.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from replicator.config import Window


def window_open(window: Window, now: float) -> bool:
    local = datetime.fromtimestamp(now, ZoneInfo(window.timezone))
    minute, day = local.hour * 60 + local.minute, local.weekday()
    if window.start < window.end:
        return day in window.days and window.start <= minute < window.end
    return ((day in window.days and minute >= window.start)
            or ((day - 1) % 7 in window.days and minute < window.end))


def windows_open(windows: tuple[Window, ...], now: float) -> bool:
    """True if ``windows`` is empty or any of them is open at ``now`` (seconds since the epoch)."""
    return not windows or any(window_open(window, now) for window in windows)
