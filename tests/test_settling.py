"""Repositories found in sync are skipped by the next full pass while both ends list them the
same; any change at either end, or to the policy's settings, brings them back
(:mod:`replicator.settling`). Filesystem regions, real files; the state store on disk."""

import pytest

from drivers.base import ObjectInfo
from replicator import config as config_module
from replicator import layout, sample_images
from replicator.demo import publish
from replicator.engine import RunOptions, run_policy
from replicator.settling import Settling, fingerprint
from state.store import SettledRepository, StateStore
from tests.test_engine import BASE, filesystem_document, verify_storage

IMAGES = {(f"team/app{r}", f"v{t}"): sample_images.image([BASE, sample_images.layer({"n": f"{r}.{t}".encode()})])
          for r in range(3) for t in range(4)}
IMAGES[("team/app0", "latest")] = IMAGES[("team/app0", "v3")]


def configured(tmp_path, destinations=("dst",), **policy):
    document = filesystem_document(tmp_path, **policy)
    for name in destinations:
        document["regions"][name] = {"storage": {"filesystem": {"rootdirectory": str(tmp_path / name)}}}
    document["policies"][0]["destinations"] = list(destinations)
    return config_module.parse(document, base=tmp_path)


def passes(config, **options):
    """One pass of the policy; its reports and the requests each region received."""
    before = {name: region.storage.requests.snapshot() for name, region in config.regions.items()}
    state = StateStore(config.state_path)
    try:
        reports = run_policy(config, config.policies[0], state, RunOptions(**options))
    finally:
        state.close()
    after = {name: region.storage.requests.snapshot() for name, region in config.regions.items()}
    return reports, {name: {kind: after[name][kind] - before[name][kind] for kind in after[name]
                            if after[name][kind] != before[name][kind]} for name in after}


def settled(tmp_path, images=IMAGES, destinations=("dst",), **policy):
    """A policy's regions after a first pass (copies) and a second (finds all in sync)."""
    config = configured(tmp_path, destinations, **policy)
    for (name, tag), image in images.items():
        publish(config.regions["src"].storage, name, tag, image)
    passes(config)
    [report, *_], _ = passes(config)
    assert (report.repositories_unchanged, report.tags_replicated) == (0, 0)
    return config


def test_settled_repositories_are_skipped_and_cost_only_their_listing(tmp_path):
    config = settled(tmp_path)
    [report], requests = passes(config)
    assert (report.repositories_unchanged, report.tags_unchanged) == (3, len(IMAGES))
    assert (report.tags_replicated, report.tags_failed) == (0, 0)
    assert requests == {"src": {"list": 1}, "dst": {"list": 1}}


def test_a_push_to_the_source_brings_back_only_its_repository(tmp_path):
    config = settled(tmp_path)
    image = sample_images.image([BASE, sample_images.layer({"n": b"new"})])
    publish(config.regions["src"].storage, "team/app1", "v9", image)
    [report], _ = passes(config)
    assert (report.repositories_unchanged, report.tags_replicated) == (2, 1)
    assert report.tags_unchanged == len(IMAGES)
    assert verify_storage(config.regions["src"].storage, config.regions["dst"].storage,
                          [*IMAGES, ("team/app1", "v9")]).drift == []
    [report], _ = passes(config)   # the repository settles again, then is skipped
    [report], _ = passes(config)
    assert report.repositories_unchanged == 3


def test_a_tag_deleted_at_the_destination_is_made_again_from_the_source_listed_again(tmp_path):
    config = settled(tmp_path)
    config.regions["dst"].storage.delete(layout.tag_current_key("team/app2", "v1"))
    [report], requests = passes(config)
    assert (report.repositories_unchanged, report.tags_replicated) == (2, 1)
    assert requests["src"]["list"] == 2      # the whole listing, then team/app2's again
    assert verify_storage(config.regions["src"].storage, config.regions["dst"].storage,
                          sorted(IMAGES)).drift == []


def test_one_destination_changed_behind_its_back_leaves_the_other_skipping(tmp_path):
    config = settled(tmp_path, destinations=("dst", "far"))
    config.regions["far"].storage.delete(layout.tag_current_key("team/app0", "latest"))
    reports, requests = passes(config)
    near, far = reports
    assert (near.repositories_unchanged, near.tags_replicated) == (3, 0)
    assert (far.repositories_unchanged, far.tags_replicated) == (2, 1)
    assert requests["src"]["list"] == 2 and "get" not in requests["dst"]
    assert verify_storage(config.regions["src"].storage, config.regions["far"].storage,
                          sorted(IMAGES)).drift == []


def test_changed_settings_bring_every_repository_back(tmp_path):
    config = settled(tmp_path, tags={"include": ["v*"]})
    assert not (tmp_path / "dst" / layout.tag_current_key("team/app0", "latest")).exists()
    widened = configured(tmp_path)
    [report], _ = passes(widened)
    assert (report.repositories_unchanged, report.tags_replicated) == (0, 1)
    assert verify_storage(widened.regions["src"].storage, widened.regions["dst"].storage,
                          sorted(IMAGES)).drift == []


def test_a_failing_tag_keeps_its_repository_unsettled(tmp_path):
    config = configured(tmp_path)
    layer = sample_images.layer({"n": b"to be broken"})
    images = {**IMAGES, ("team/app1", "v2"): sample_images.image([BASE, layer])}
    for (name, tag), image in images.items():
        publish(config.regions["src"].storage, name, tag, image)
    path = tmp_path / "src" / layout.blob_key(layer.digest)
    path.write_bytes(b"not the layer")
    for _ in range(3):
        [report], _ = passes(config)
    assert (report.repositories_unchanged, report.tags_failed) == (2, 1)
    path.write_bytes(layer.data)
    [report], _ = passes(config)
    assert (report.repositories_unchanged, report.tags_replicated, report.tags_failed) == (2, 1, 0)


def test_an_audit_skips_nothing(tmp_path):
    config = settled(tmp_path)
    [report], _ = passes(config, audit=True)
    assert (report.repositories_unchanged, report.tags_unchanged) == (0, len(IMAGES))


def test_a_deletion_at_the_source_is_followed(tmp_path):
    config = settled(tmp_path, delete=True)
    source = config.regions["src"].storage
    for key in [info.key for page in source.list(layout.REPOSITORIES_PREFIX) for info in page
                if "/_manifests/tags/v0/" in info.key and "/team/app2/" in info.key]:
        source.delete(key)
    [report], _ = passes(config)
    assert (report.repositories_unchanged, report.tags_deleted) == (2, 1)
    assert not (tmp_path / "dst" / layout.tag_current_key("team/app2", "v0")).exists()


def entry(key: str, etag: str = "e") -> ObjectInfo:
    return ObjectInfo(key, 71, etag, 0.0)


def test_a_fingerprint_changes_with_any_key_size_or_etag():
    entries = [entry("a/_layers/x/link"), entry("a/_manifests/tags/v/current/link")]
    assert fingerprint(entries) == fingerprint(list(entries))
    assert fingerprint(entries) != fingerprint(entries[:1])
    assert fingerprint(entries) != fingerprint([entries[0], entry(entries[1].key, "f")])
    assert fingerprint(entries) != fingerprint([entries[0], ObjectInfo(entries[1].key, 72, "e", 0.0)])


def test_the_source_skips_only_what_every_destination_settled(tmp_path):
    policy = configured(tmp_path, destinations=("dst", "far")).policies[0]
    settling = Settling(policy, ["dst", "far"], {})
    row = settling.settle("s", "h", 4)
    settling.rows = {("dst", "a"): row, ("far", "a"): row, ("dst", "b"): row,
                     ("far", "c"): SettledRepository("s", "h", "other settings", 4)}
    assert [name for name in "abc" if settling.source_skips(name, "s")] == ["a"]
    assert not settling.source_skips("a", "changed")
    skips = settling.destination_skips("dst", {"a"}.__contains__)
    assert (skips("a", "h"), skips("a", "other"), skips("b", "h")) == (True, False, False)
    assert (settling.tags("dst", "a"), settling.tags("far", "c")) == (4, 0)


def test_a_tag_a_real_registry_moves_in_place_brings_its_repository_back(tmp_path):
    """skopeo pushes to Debian's docker-registry; after its repositories settle, a push that
    moves one tag (new links, and the tag's ``current/link`` rewritten in place, as 2.8 writes
    it) unsettles only that repository, and a second registry serving the destination answers
    the new digest for it and the old one for the other."""
    from tests import registry as reg

    first = sample_images.image([BASE, sample_images.layer({"n": b"first"})])
    moved = sample_images.image([BASE, sample_images.layer({"n": b"moved"})])
    config = configured(tmp_path)
    primary = reg.filesystem_storage(tmp_path / "src")
    with reg.start_registry(primary, tmp_path / "logs") as source:
        for name in ("apps/web", "tools"):
            reg.push(source.url, name, "1", first, tmp_path / "work")
        passes(config)
        passes(config)
        [report], _ = passes(config)
        assert (report.repositories_unchanged, report.tags_unchanged) == (2, 2)
        reg.push(source.url, "apps/web", "1", moved, tmp_path / "work")
    [report], requests = passes(config)
    assert (report.repositories_unchanged, report.tags_replicated) == (1, 1)
    assert requests["src"]["get"] >= 1 and "put" in requests["dst"]
    with reg.start_registry(reg.filesystem_storage(tmp_path / "dst"), tmp_path / "logs",
                            readonly=True) as replica:
        assert reg.manifest_digest(replica.url, "apps/web", "1") == moved.digest
        assert reg.manifest_digest(replica.url, "tools", "1") == first.digest
