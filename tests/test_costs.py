"""The pure price arithmetic: which egress rate applies, and what figures cost."""

import pytest

from replicator.costs import GIB, PriceTable, Priced, Prices, Pricing, estimate

EAST = Prices({"default": 0.02, "internet": 0.09, "eu-west-1": 0.03, "ap": 0.07},
              {"list": 0.005, "get": 0.0004, "head": 0.0004, "put": 0.005, "copy": 0.005},
              cdn_invalidation_path=0.005)
WEST = Prices({"default": 0.02}, {"put": 0.005})
GCP = Prices({"default": 0.01, "internet": 0.12}, {"put": 0.005, "get": 0.0004})
AWS = PriceTable("aws", {"us-east-1": EAST, "eu-west-1": WEST, "us-west-2": WEST}, "2024-06")
GOOGLE = PriceTable("gcp", {"europe-west4": GCP}, "2024-06")
PRICING = Pricing((AWS, GOOGLE), {
    "primary": Priced(AWS, "us-east-1", EAST), "eu": Priced(AWS, "eu-west-1", WEST),
    "oregon": Priced(AWS, "us-west-2", WEST), "ap": Priced(AWS, "us-west-2", WEST),
    "gcs": Priced(GOOGLE, "europe-west4", GCP)})


@pytest.mark.parametrize("destination, rate", [
    ("ap", 0.07),          # the configured region's own name comes first
    ("eu", 0.03),          # then the entry it is priced as, in the same table
    ("oregon", 0.02),      # then the table's default
    ("gcs", 0.09),         # another table: the internet
    ("onprem", 0.09),      # an unpriced region: the internet
])
def test_egress_rate_by_destination(destination, rate):
    assert PRICING.egress_per_gib("primary", destination) == rate


def test_internet_falls_back_to_default_and_unpriced_sources_cost_nothing():
    assert PRICING.egress_per_gib("eu", "gcs") == 0.02
    assert PRICING.egress_per_gib("onprem", "primary") == 0.0


def test_estimate_charges_requests_where_served_egress_where_bytes_leave_and_purges_at_the_cdn():
    costs = estimate(PRICING,
                     {"primary": {"list": 2, "get": 1000, "head": 500, "put": 0},
                      "gcs": {"list": 2, "put": 2000, "get": 0}, "onprem": {"put": 7}},
                     {("primary", "gcs"): 2 * GIB, ("primary", "eu"): GIB // 2},
                     {"primary": 40})
    assert costs["primary"].requests == pytest.approx((2 * 0.005 + 1000 * 0.0004 + 500 * 0.0004) / 1000)
    assert costs["primary"].egress == pytest.approx(2 * 0.09 + 0.5 * 0.03)
    assert costs["primary"].cdn == pytest.approx(40 * 0.005)
    assert costs["gcs"].requests == pytest.approx(2000 * 0.005 / 1000)   # list is not priced there
    assert costs["gcs"].egress == 0 and costs["onprem"].total == 0
    assert costs["primary"].total == pytest.approx(costs["primary"].requests + costs["primary"].egress
                                                   + costs["primary"].cdn)
