"""The pacing and guard keys of a policy: what loads, and each mistake naming its field; and
when sync windows are open (a pure function over time zones)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from replicator.config import Budget, DestinationSettings, Window
from replicator.windows import windows_open
from tests.test_config import credentials, document, error_of, load  # noqa: F401 (fixture)

ENTRY = {"region": "eu-west", "bandwidth": "50MiB/s",
         "windows": [{"days": ["mon", "tue", "wed", "thu", "fri"], "hours": "02:00-05:00",
                      "timezone": "Asia/Kolkata"}],
         "egress_budget": {"bytes": "500GiB", "per": "1d"}}


def with_policy(**keys) -> dict:
    doc = document()
    doc["policies"][0].update(keys)
    return doc


def test_the_pacing_keys_load(tmp_path):
    policy = load(tmp_path, with_policy(destinations=[ENTRY], priority=["latest", "v*"],
                                        order="newest-first", keep_latest=3, strict_windows=True,
                                        delete_delay="1h", max_delete=10)).policy("prod")
    assert policy.destinations == ("eu-west",)
    assert policy.destination_settings("eu-west") == DestinationSettings(
        50 * 2**20, (Window(frozenset(range(5)), 120, 300, "Asia/Kolkata"),),
        Budget(500 * 2**30, 86400.0))
    assert (policy.priority, policy.order, policy.keep_latest, policy.strict_windows,
            policy.delete_delay, policy.max_delete) == (("latest", "v*"), "newest-first", 3,
                                                        True, 3600.0, 10)


def test_a_plain_name_keeps_the_defaults(tmp_path):
    policy = load(tmp_path, document()).policy("prod")
    assert policy.destination_settings("eu-west") == DestinationSettings()
    assert (policy.priority, policy.order, policy.keep_latest, policy.delete_delay,
            policy.max_delete, policy.strict_windows) == ((), "name", None, 0.0, 100, False)


@pytest.mark.parametrize("entry, field", [
    ({"region": "mars"}, "policies[0].destinations[0].region"),
    ({"bandwidth": "1MiB/s"}, "policies[0].destinations[0].region"),
    ({**ENTRY, "bandwidth": "fast"}, "policies[0].destinations[0].bandwidth"),
    ({**ENTRY, "bandwidth": "50MiB"}, "policies[0].destinations[0].bandwidth"),
    ({**ENTRY, "bandwidth": "0MiB/s"}, "policies[0].destinations[0].bandwidth"),
    ({**ENTRY, "colour": 1}, "policies[0].destinations[0].colour"),
    ({**ENTRY, "windows": {"days": ["mon"]}}, "policies[0].destinations[0].windows"),
    ({**ENTRY, "windows": [{"days": ["funday"], "hours": "02:00-05:00"}]},
     "policies[0].destinations[0].windows[0].days"),
    ({**ENTRY, "windows": [{"hours": "2-5"}]}, "policies[0].destinations[0].windows[0].hours"),
    ({**ENTRY, "windows": [{"hours": "05:00-05:00"}]}, "policies[0].destinations[0].windows[0].hours"),
    ({**ENTRY, "windows": [{"hours": "01:00-24:30"}]}, "policies[0].destinations[0].windows[0].hours"),
    ({**ENTRY, "windows": [{"hours": "01:00-02:00", "timezone": "Mars/Olympus"}]},
     "policies[0].destinations[0].windows[0].timezone"),
    ({**ENTRY, "windows": [{"hours": "01:00-02:00", "tz": "UTC"}]},
     "policies[0].destinations[0].windows[0].tz"),
    ({**ENTRY, "egress_budget": {"bytes": "lots"}}, "policies[0].destinations[0].egress_budget.bytes"),
    ({**ENTRY, "egress_budget": {"per": "1d"}}, "policies[0].destinations[0].egress_budget.bytes"),
    ({**ENTRY, "egress_budget": {"bytes": "1GiB", "per": "daily"}},
     "policies[0].destinations[0].egress_budget.per"),
    ({**ENTRY, "egress_budget": "1GiB"}, "policies[0].destinations[0].egress_budget"),
])
def test_each_destination_entry_mistake_names_its_field(tmp_path, entry, field):
    assert error_of(tmp_path, with_policy(destinations=[entry])).field == field


@pytest.mark.parametrize("keys, field", [
    ({"priority": "latest"}, "policies[0].priority"),
    ({"priority": ["latest", ""]}, "policies[0].priority"),
    ({"order": "random"}, "policies[0].order"),
    ({"keep_latest": 0}, "policies[0].keep_latest"),
    ({"keep_latest": "3"}, "policies[0].keep_latest"),
    ({"strict_windows": "yes"}, "policies[0].strict_windows"),
    ({"delete_delay": "soon"}, "policies[0].delete_delay"),
    ({"max_delete": -1}, "policies[0].max_delete"),
    ({"destinations": ["eu-west", {"region": "eu-west"}]}, "policies[0].destinations"),
])
def test_each_policy_key_mistake_names_its_field(tmp_path, keys, field):
    assert error_of(tmp_path, with_policy(**keys)).field == field


def at(text: str, zone: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


NIGHT = Window(frozenset({4}), 22 * 60, 2 * 60, "Asia/Kolkata")   # fri 22:00-02:00, wrapping


@pytest.mark.parametrize("moment, expected", [
    ("2026-12-04 21:59", False),   # a Friday
    ("2026-12-04 22:00", True),
    ("2026-12-05 01:59", True),    # Saturday morning still belongs to Friday's window
    ("2026-12-05 02:00", False),
    ("2026-12-05 22:30", False),   # Saturday night is not in it
    ("2026-12-03 23:00", False),   # nor Thursday's
])
def test_a_window_wraps_midnight_in_its_time_zone(moment, expected):
    assert windows_open((NIGHT,), at(moment, "Asia/Kolkata")) is expected


def test_windows_are_read_in_their_own_time_zone_and_none_means_always():
    morning = Window(frozenset(range(7)), 2 * 60, 5 * 60, "Asia/Kolkata")
    assert windows_open((morning,), at("2026-12-01 21:00", "UTC"))       # 02:30 in Kolkata
    assert not windows_open((morning,), at("2026-12-01 02:30", "UTC"))
    assert windows_open((), 0.0)
    whole_day = Window(frozenset({0}), 0, 24 * 60, "UTC")
    assert windows_open((whole_day,), at("2026-11-30 23:59", "UTC"))     # a Monday
    assert not windows_open((whole_day,), at("2026-12-01 00:00", "UTC"))
