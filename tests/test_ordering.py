"""The order a pass starts tags in, and what keep_latest keeps (pure functions)."""

from __future__ import annotations

from drivers.base import ObjectInfo
from replicator.config import Filter, Policy
from replicator.ordering import kept, start_order


def policy(**keys) -> Policy:
    return Policy("p", "a", ("b",), Filter(), Filter(), False, **keys)


def tags(**times) -> dict:
    """repository/tag=time pairs, written repo__tag."""
    return {tuple(name.split("__")): ObjectInfo(name, 71, name, float(when))
            for name, when in times.items()}


LISTED = tags(web__latest=5, web__v2=4, web__v1=9, web__dev=7, api__latest=1, api__v1=8, api__b=3)


def test_name_order_without_priority_is_the_listing_sorted():
    assert list(start_order(policy(), LISTED)) == sorted(LISTED)


def test_priority_globs_then_recency():
    ordered = list(start_order(policy(priority=("latest", "v*"), order="newest-first"), LISTED))
    assert ordered == [("web", "latest"), ("api", "latest"), ("web", "v1"), ("api", "v1"),
                       ("web", "v2"), ("web", "dev"), ("api", "b")]
    oldest = list(start_order(policy(priority=("v*",), order="oldest-first"), LISTED))
    assert oldest == [("web", "v2"), ("api", "v1"), ("web", "v1"), ("api", "latest"), ("api", "b"),
                      ("web", "latest"), ("web", "dev")]


def test_equal_times_fall_back_to_name_as_a_registry_source_gives():
    same = tags(r__b=0, r__a=0, r__c=0, q__z=0)
    assert list(start_order(policy(order="newest-first"), same)) == sorted(same)


def test_keep_latest_keeps_the_newest_per_repository():
    assert sorted(kept(policy(keep_latest=2), LISTED)) == [("api", "b"), ("api", "v1"),
                                                            ("web", "dev"), ("web", "v1")]
    assert kept(policy(), LISTED) == LISTED
    same = tags(r__a=0, r__b=0, r__c=0)
    assert sorted(kept(policy(keep_latest=2), same)) == [("r", "b"), ("r", "c")]
