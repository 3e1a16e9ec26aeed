import json
import subprocess
import sys
from collections import Counter

import pytest

from drivers.errors import ConfigError
from drivers.filesystem import FilesystemDriver
from replicator import sample_images
from replicator.demo import publish
from replicator.sharding import Shard, owner, parse_shard
from tests.test_engine import write_filesystem_config

NAMES = [f"team{i % 17}/app-{i}" for i in range(3000)]


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_every_repository_is_owned_by_exactly_one_shard(count):
    for name in NAMES:
        assert sum(Shard(index, count).owns(name) for index in range(count)) == 1


def test_ownership_is_balanced_and_stable():
    counts = Counter(owner(name, 4) for name in NAMES)
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > len(NAMES) / 4 * 0.8
    assert [owner(name, 4) for name in NAMES[:50]] == [owner.__wrapped__(name, 4) for name in NAMES[:50]]


def test_growing_the_shard_count_moves_few_repositories():
    moved = sum(owner(name, 4) != owner(name, 5) for name in NAMES)
    assert moved < len(NAMES) * 0.3  # about 1/5; modulo hashing would move about 4/5
    assert all(owner(name, 5) == 4 for name in NAMES if owner(name, 4) != owner(name, 5))


@pytest.mark.parametrize("text, hostname, expected", [
    ("0/1", "x", Shard(0, 1)), ("2/3", "x", Shard(2, 3)), ("auto/3", "replicator-2", Shard(2, 3)),
    ("auto/5", "replicator-0", Shard(0, 5)),
])
def test_parse_shard(text, hostname, expected):
    assert parse_shard(text, hostname) == expected


@pytest.mark.parametrize("text, hostname", [("3/3", "x"), ("a/3", "x"), ("1/0", "x"), ("auto/3", "host"),
                                            ("auto/3", "replicator-3"), ("1", "x")])
def test_bad_shards_name_the_flag(text, hostname):
    with pytest.raises(ConfigError) as caught:
        parse_shard(text, hostname)
    assert caught.value.field == "--shard"


def test_shards_together_replicate_everything_once(tmp_path):
    image = sample_images.image([sample_images.layer({"a": b"a"})])
    source = FilesystemDriver(str(tmp_path / "src"))
    repositories = [f"repo{i}" for i in range(12)]
    for name in repositories:
        publish(source, name, "latest", image)
    replicated = Counter()
    for index in range(3):
        path = write_filesystem_config(tmp_path, state=f"state{index}.db")
        result = subprocess.run([sys.executable, "-m", "replicator", "sync", "--config", str(path),
                                 "--json", "--shard", f"{index}/3"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        replicated[index] = json.loads(result.stdout)["passes"][0]["tags_replicated"]
    assert sum(replicated.values()) == len(repositories) and all(replicated.values())
    destination = FilesystemDriver(str(tmp_path / "dst"))
    tags = [info.key for page in destination.list("docker/registry/v2/repositories/") for info in page
            if info.key.endswith("current/link")]
    assert len(tags) == len(repositories)
