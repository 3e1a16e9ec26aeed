"""CDN purgers, chosen by the provider key of a region's ``cdn:`` block; imported lazily."""

from drivers.cdn.base import Purger
from drivers.plugins import build

PURGERS = {
    "cloudfront": ("drivers.cdn.cloudfront", "CloudFrontPurger", "boto3"),
    "cloudflare": ("drivers.cdn.cloudflare", "CloudflarePurger", "the standard library"),
    "fastly": ("drivers.cdn.fastly", "FastlyPurger", "the standard library"),
    "http": ("drivers.cdn.http", "HttpPurger", "the standard library"),
}


def open_purger(kind: str, params: object) -> Purger:
    """Build the purger for provider ``kind``. Raises ``ConfigError`` naming the field
    relative to the ``cdn:`` block."""
    return build(PURGERS, kind, params, "CDN provider")
