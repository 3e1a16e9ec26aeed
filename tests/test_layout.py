import pytest

from replicator import layout

DIGEST = "sha256:" + "ab" * 32


def test_blob_key_fans_out_by_first_two_hex_digits():
    assert layout.blob_key(DIGEST) == f"docker/registry/v2/blobs/sha256/ab/{'ab' * 32}/data"


def test_link_keys_follow_distribution_layout():
    hexdigest = "ab" * 32
    base = "docker/registry/v2/repositories/team/app"
    assert layout.layer_link_key("team/app", DIGEST) == f"{base}/_layers/sha256/{hexdigest}/link"
    assert layout.revision_link_key("team/app", DIGEST) == \
        f"{base}/_manifests/revisions/sha256/{hexdigest}/link"
    assert layout.tag_current_key("team/app", "v1.2") == f"{base}/_manifests/tags/v1.2/current/link"
    assert layout.tag_index_key("team/app", "v1.2", DIGEST) == \
        f"{base}/_manifests/tags/v1.2/index/sha256/{hexdigest}/link"


def test_link_files_are_exactly_71_bytes_without_newline():
    data = layout.link_bytes(DIGEST)
    assert len(data) == 71 and not data.endswith(b"\n")
    assert layout.parse_link(data) == DIGEST


@pytest.mark.parametrize("junk", [b"", b"sha256:" + b"ab" * 32 + b"\n", b"sha256:" + b"AB" * 32,
                                  b"sha512:" + b"ab" * 32, b"\xff" * 71, b"garbage"])
def test_junk_link_files_are_rejected(junk):
    with pytest.raises(layout.LayoutError):
        layout.parse_link(junk)


@pytest.mark.parametrize("name", ["a", "library/ubuntu", "my-org/my.app/sub_dir", "a__b", "x--y"])
def test_valid_repository_names(name):
    assert layout.check_name(name) == name


@pytest.mark.parametrize("name", ["", "UPPER", "../etc", "/abs", "a/../b", "a//b", "a\\b", "a\0b",
                                  "_hidden", "a/_layers", "trailing/", "-dash", "a" * 256, "a b"])
def test_names_that_break_the_grammar_or_escape_are_rejected(name):
    with pytest.raises(layout.LayoutError):
        layout.repository_prefix(name)


@pytest.mark.parametrize("tag", ["latest", "v1.0", "sha256-" + "ab" * 32 + ".sig", "_x", "A" * 128])
def test_valid_tags(tag):
    assert layout.check_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", ".hidden", "-x", "a/b", "..", "a\0", "A" * 129, "a b"])
def test_invalid_tags_are_rejected(tag):
    with pytest.raises(layout.LayoutError):
        layout.tag_current_key("app", tag)


@pytest.mark.parametrize("digest", ["sha256:" + "ab" * 31, "sha256:../../x", "md5:abc", "ab" * 32])
def test_invalid_digests_are_rejected(digest):
    with pytest.raises(layout.LayoutError):
        layout.blob_key(digest)


def test_parse_key_classifies_every_kind():
    assert layout.parse_key(layout.blob_key(DIGEST)) == layout.BlobData(DIGEST)
    assert layout.parse_key(layout.layer_link_key("a/b", DIGEST)) == layout.LayerLink("a/b", DIGEST)
    assert layout.parse_key(layout.revision_link_key("a/b", DIGEST)) == layout.RevisionLink("a/b", DIGEST)
    assert layout.parse_key(layout.tag_current_key("a/b", "t")) == layout.TagCurrent("a/b", "t")
    assert layout.parse_key(layout.tag_index_key("a/b", "t", DIGEST)) == layout.TagIndex("a/b", "t", DIGEST)


@pytest.mark.parametrize("key", [
    "docker/registry/v2/repositories/app/_uploads/1234/data",
    "docker/registry/v2/repositories/app/_uploads/1234/startedat",
    "docker/registry/v2/blobs/sha256/cd/" + "ab" * 32 + "/data",
    "docker/registry/v2/repositories/BAD/_manifests/tags/t/current/link",
    "docker/registry/v2/repositories/app/_manifests/tags/.t/current/link",
    "other/file",
])
def test_uploads_mismatched_fanout_and_bad_names_are_not_replicated(key):
    assert layout.parse_key(key) is None


@pytest.mark.parametrize("key", [
    layout.tag_current_key("app", "t") + ".0b5c9a1e-1f2a-4d3b-9c8d-7e6f5a4b3c2d.tmp",
    layout.blob_key(DIGEST) + ".0b5c9a1e-1f2a-4d3b-9c8d-7e6f5a4b3c2d.tmp",
])
def test_distribution_3_filesystem_temporary_siblings_are_not_replicated(key):
    """3.x's filesystem ``PutContent`` writes ``<path>.<uuid>.tmp`` and renames it over."""
    assert layout.parse_key(key) is None
