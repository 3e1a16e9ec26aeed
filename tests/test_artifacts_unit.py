"""Artifact naming, type selection, manifest fields, cosign signature checks and the policy
keys that configure them (pure functions; configuration through ``config.load``)."""

from __future__ import annotations

import base64
import json

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from drivers.errors import ConfigError
from replicator import config
from replicator.artifacts import (ArtifactTags, artifact_subject, artifact_types, standalone,
                                  types_selected, wanted_tag)
from replicator.config import Filter
from replicator.errors import ArtifactFailed, ReplicationError, Unsigned, error_kind
from replicator.manifests import digest_of, parse_manifest
from replicator.signatures import names_digest, signed_layers, verifies
from tests import supply_chain as sc

HEX = "ab" * 32
DIGEST = f"sha256:{HEX}"


def manifest(document: dict):
    data = json.dumps(document).encode()
    return parse_manifest(data, digest_of(data))


def blob(media_type: str, data: bytes = b"{}", **extra) -> dict:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **extra}


@pytest.mark.parametrize("tag, subject", [
    (f"sha256-{HEX}.sig", DIGEST), (f"sha256-{HEX}.att", DIGEST), (f"sha256-{HEX}.sbom", DIGEST),
    (f"sha256-{HEX}", DIGEST), (f"sha256-{HEX}.custom-1", DIGEST), ("v1", None),
    (f"sha256-{HEX[:-1]}.sig", None), (f"sha512-{HEX}.sig", None), (f"sha256-{HEX}.", None)])
def test_artifact_subject(tag, subject):
    assert artifact_subject(tag) == subject


def test_artifact_tags_by_repository_and_subject():
    other = "cd" * 32
    tags = ArtifactTags([("a", f"sha256-{HEX}.sig"), ("a", f"sha256-{HEX}"), ("a", "v1"),
                         ("b", f"sha256-{HEX}.att"), ("a", f"sha256-{other}.sig")])
    assert tags.of("a", DIGEST) == [f"sha256-{HEX}", f"sha256-{HEX}.sig"]
    assert tags.of("b", DIGEST) == [f"sha256-{HEX}.att"]
    assert tags.of("c", DIGEST) == []
    assert set(tags.subjects("a")) == {DIGEST, f"sha256:{other}"}


def test_manifest_fields_for_artifacts():
    referrer = manifest({"schemaVersion": 2, "mediaType": sc.OCI_MANIFEST,
                         "artifactType": sc.SPDX, "config": blob(sc.OCI_EMPTY),
                         "layers": [blob(sc.SPDX, b"sbom", annotations={"k": "v", "n": 1})],
                         "subject": {"mediaType": sc.OCI_MANIFEST, "digest": DIGEST, "size": 9}})
    assert (referrer.subject, referrer.artifact_type) == (DIGEST, sc.SPDX)
    assert referrer.blobs[1].annotations == (("k", "v"),)
    signature = manifest({"schemaVersion": 2, "mediaType": sc.OCI_MANIFEST,
                          "config": blob(sc.OCI_CONFIG), "layers": []})
    assert (signature.subject, signature.artifact_type) == (None, sc.OCI_CONFIG)
    index = manifest({"schemaVersion": 2, "mediaType": sc.OCI_INDEX, "manifests": [
        {"mediaType": sc.OCI_MANIFEST, "digest": referrer.digest, "size": len(referrer.data),
         "artifactType": sc.SPDX}]})
    assert (index.artifact_type, index.subject) == ("", None)
    tree = {index.digest: index, referrer.digest: referrer}
    assert artifact_types(index.digest, tree) == {sc.SPDX}
    assert artifact_types(referrer.digest, tree) == {sc.SPDX}


def test_types_selected_needs_every_type():
    assert types_selected(Filter(), {sc.SPDX, sc.OCI_CONFIG})
    assert not types_selected(Filter(exclude=("application/spdx*",)), {sc.SPDX, sc.OCI_CONFIG})
    assert types_selected(Filter(include=("application/spdx*",)), {sc.SPDX})


def test_signature_checks():
    key = sc.new_key()
    payload = sc.simple_signing_payload("registry", "app", DIGEST)
    signature = sc.sign_bytes(key, payload)
    assert names_digest(payload, DIGEST) and not names_digest(payload, "sha256:" + "0" * 64)
    assert not names_digest(b"not json", DIGEST)
    assert verifies(key.public_key(), signature, payload)
    assert not verifies(key.public_key(), signature, payload + b" ")
    assert not verifies(sc.new_key().public_key(), signature, payload)
    for kind in ("rsa", "ed25519"):
        other = sc.new_key(kind)
        assert verifies(other.public_key(), sc.sign_bytes(other, payload), payload)
    layer = blob(sc.SIMPLE_SIGNING, payload,
                 annotations={sc.SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()})
    broken = blob(sc.SIMPLE_SIGNING, b"x", annotations={sc.SIGNATURE_ANNOTATION: "%%%"})
    parsed = manifest({"schemaVersion": 2, "mediaType": sc.OCI_MANIFEST,
                       "config": blob(sc.OCI_CONFIG), "layers": [layer, broken, blob(sc.SPDX)]})
    assert [(d.digest, s) for d, s in signed_layers(parsed)] == [(layer["digest"], signature)]


def test_error_kinds():
    assert error_kind(Unsigned("no signature")) == "unsigned"
    assert error_kind(ArtifactFailed("artifact x failed", Unsigned("no"))) == "unsigned"
    assert error_kind(ArtifactFailed("artifact x failed", ReplicationError("gone"))) == "source_content"


def document(policy: dict) -> dict:
    return {"state": {"path": "state.db"},
            "regions": {"a": {"storage": {"filesystem": {"rootdirectory": "/tmp/a"}}},
                        "b": {"storage": {"filesystem": {"rootdirectory": "/tmp/b"}}}},
            "policies": [{"name": "p", "source": "a", "destinations": ["b"], **policy}]}


def load(tmp_path, policy: dict) -> config.Policy:
    path = tmp_path / "replicator.yml"
    path.write_text(yaml.safe_dump(document(policy)))
    return config.load(path).policies[0]


def test_defaults_follow_every_type_without_gate(tmp_path):
    policy = load(tmp_path, {})
    assert (policy.artifacts, policy.artifact_types, policy.signature_keys) == ("follow", Filter(), ())
    assert wanted_tag(policy, f"sha256-{HEX}.sig") and not wanted_tag(policy, "v1")
    assert standalone(policy, f"sha256-{HEX}.sig")


def test_keys_from_files_relative_to_the_config_and_inline(tmp_path):
    ecdsa, rsa = sc.new_key(), sc.new_key("rsa")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "cosign.pub").write_text(sc.public_pem(ecdsa))
    policy = load(tmp_path, {"artifact_types": {"exclude": ["application/spdx+json"]},
                             "require_signature": {"keys": ["keys/cosign.pub", sc.public_pem(rsa)]}})
    assert len(policy.signature_keys) == 2
    assert policy.artifact_types == Filter(("*",), ("application/spdx+json",))
    assert not standalone(policy, f"sha256-{HEX}.sig") and standalone(policy, "v1")


@pytest.mark.parametrize("policy, field", [
    ({"artifacts": "all"}, "policies[0].artifacts"),
    ({"artifact_types": {"include": "x"}}, "policies[0].artifact_types.include"),
    ({"artifact_types": {"only": ["x"]}}, "policies[0].artifact_types.only"),
    ({"require_signature": {"keys": []}}, "policies[0].require_signature.keys"),
    ({"require_signature": {}}, "policies[0].require_signature.keys"),
    ({"require_signature": {"key": ["x"]}}, "policies[0].require_signature.key"),
    ({"require_signature": ["x"]}, "policies[0].require_signature"),
    ({"require_signature": {"keys": ["missing.pub"]}}, "policies[0].require_signature.keys[0]"),
    ({"require_signature": {"keys": ["-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"]}},
     "policies[0].require_signature.keys[0]"),
    ({"require_signature": {"keys": [7]}}, "policies[0].require_signature.keys[0]"),
])
def test_bad_artifact_settings_name_the_field(tmp_path, policy, field):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, policy)
    assert caught.value.field == field


def test_other_curves_and_artifacts_tags_with_a_gate_are_refused(tmp_path):
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, {"require_signature": {"keys": [sc.public_pem(p384)]}})
    assert caught.value.field == "policies[0].require_signature.keys[0]"
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, {"artifacts": "tags",
                        "require_signature": {"keys": [sc.public_pem(sc.new_key())]}})
    assert caught.value.field == "policies[0].require_signature"
