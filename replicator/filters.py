"""Which repositories and tags a policy selects: shell globs, include then exclude."""

from fnmatch import fnmatchcase

from replicator.config import Filter, Policy


def selected(policy_filter: Filter, value: str) -> bool:
    return (any(fnmatchcase(value, pattern) for pattern in policy_filter.include)
            and not any(fnmatchcase(value, pattern) for pattern in policy_filter.exclude))


def policy_selects(policy: Policy, name: str, tag: str) -> bool:
    return selected(policy.repositories, name) and selected(policy.tags, tag)
