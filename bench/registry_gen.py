"""Generate a realistic Docker Distribution registry into a region, deterministically by seed.

The registry has ``--repositories`` repositories (tag counts skewed: a few busy repositories,
a long tail) holding ``--tags`` tags in all, and about ``--size`` bytes of unique blobs:

- a shared pool of base OS layers and language-runtime layers, reused by many repositories;
- per repository a dependency layer that changes every few builds;
- per tag one application layer (16 KiB to 2 MiB before scaling), sometimes a second small one;
- configs of about 1-3 KiB with a history entry per layer, OCI or Docker schema 2 media types;
- a ``latest`` tag per repository and a few rebuilt tags that alias an earlier image;
- a few multi-arch indexes (amd64 and arm64 children, arm64 bases of their own).

Layer sizes are scaled together so that the total comes out near ``--size``. Layers are random
bytes, not tarballs; manifests and configs are valid JSON, every digest is right, and links
are written as a registry push writes them. The same seed and flags give the same digests.

    python bench/registry_gen.py --filesystem DIR [--size 1GiB] [--tags 1000] [--repositories 50]
    python bench/registry_gen.py --config replicator.yml --region us-east [...]

Other scripts import :func:`generate` and :func:`move_tag`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.base import StorageDriver  # noqa: E402
from drivers.filesystem import FilesystemDriver  # noqa: E402
from replicator import config as config_module  # noqa: E402
from replicator import layout  # noqa: E402
from replicator.manifests import Manifest, parse_manifest  # noqa: E402
from replicator.planner import plan_tag  # noqa: E402
from replicator.sample_images import (DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LIST,  # noqa: E402
                                      DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_LAYER,
                                      OCI_MANIFEST)

KIB, MIB, GIB = 1024, 1024 * 1024, 1024 * 1024 * 1024
POOL_SIZE = 16 * MIB
"""Random bytes drawn once per seed; layers are slices of it behind a unique header."""
SLICE = 256 * KIB
MIN_LAYER = 512
CONFIG_ESTIMATE = 2 * KIB
"""Bytes per image for its config and manifest, taken off the budget before scaling layers."""
EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``2048``, ``50MiB``, ``1GiB``, ``1.5G`` (binary multiples either way)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 50MiB, 1GiB)")
    power = " KMGT".index(match[2].upper() or " ")
    return int(float(match[1]) * 1024 ** power)


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError


class Content:
    """Deterministic layer bytes: a unique 32-byte header, then slices of a seeded random pool."""

    def __init__(self, seed: int):
        self.seed = seed
        self.pool = random.Random(f"pool:{seed}").randbytes(POOL_SIZE)

    def layer(self, name: str, size: int) -> bytes:
        header = hashlib.sha256(f"{self.seed}:{name}".encode()).digest()[:size]
        rng = random.Random(header)
        parts, remaining = [header], size - len(header)
        while remaining > 0:
            n = min(remaining, SLICE)
            start = rng.randrange(POOL_SIZE - n + 1)
            parts.append(self.pool[start:start + n])
            remaining -= n
        return b"".join(parts)


@dataclass(frozen=True)
class ImageSpec:
    """A single-platform image: its layers (by name), platform and flavour."""

    repository: str
    build: int
    layers: tuple[str, ...]
    architecture: str = "amd64"
    docker: bool = False


@dataclass(frozen=True)
class TagSpec:
    repository: str
    tag: str
    images: tuple[ImageSpec, ...]
    """One image, or the children of a multi-arch index."""


@dataclass
class Registry:
    """What :func:`generate` wrote, for checks and for :func:`move_tag`."""

    tags: dict[tuple[str, str], str] = field(default_factory=dict)
    """(repository, tag) -> the digest its current link holds."""
    blobs: dict[str, int] = field(default_factory=dict)
    """Every blob, manifests included: digest -> size."""
    manifests: dict[str, Manifest] = field(default_factory=dict)
    links: set[str] = field(default_factory=set)
    """Keys of every link file (layer, revision, tag index and tag current links)."""
    layer_names: dict[str, str] = field(default_factory=dict)
    """Layer digest -> its generator name."""
    seconds: float = 0.0

    @property
    def total_bytes(self) -> int:
        return sum(self.blobs.values())

    @property
    def keys(self) -> int:
        return len(self.blobs) + len(self.links)

    def tag_blobs(self, repository: str, tag: str) -> dict[str, int]:
        """Every blob (manifests included) a tag references: digest -> size."""
        found: dict[str, int] = {}
        pending = [self.tags[(repository, tag)]]
        while pending:
            manifest = self.manifests[pending.pop()]
            found[manifest.digest] = len(manifest.data)
            found.update((blob.digest, blob.size) for blob in manifest.blobs)
            pending.extend(child.digest for child in manifest.children)
        return found

    def summary(self) -> dict:
        sizes = sorted(size for digest, size in self.blobs.items() if digest in self.layer_names)
        return {"repositories": len({name for name, _ in self.tags}), "tags": len(self.tags),
                "indexes": sum(1 for d in set(self.tags.values()) if self.manifests[d].children),
                "blobs": len(self.blobs), "layers": len(sizes),
                "manifests": len(self.manifests), "links": len(self.links), "keys": self.keys,
                "bytes": self.total_bytes, "largest_layer": sizes[-1] if sizes else 0,
                "median_layer": sizes[len(sizes) // 2] if sizes else 0,
                "seconds": round(self.seconds, 2)}


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _tag_counts(rng: random.Random, repositories: int, tags: int) -> list[int]:
    """``tags`` split over ``repositories`` (each at least one when possible), Zipf-skewed."""
    weights = [1 / (i + 1) ** 0.8 for i in range(repositories)]
    rng.shuffle(weights)
    base = 1 if tags >= repositories else 0
    spare = tags - base * repositories
    shares = [spare * w / sum(weights) for w in weights]
    counts = [base + int(share) for share in shares]
    by_remainder = sorted(range(repositories), key=lambda i: int(shares[i]) - shares[i])
    for i in by_remainder[:tags - sum(counts)]:
        counts[i] += 1
    return counts


def plan(seed: int, repositories: int, tags: int) -> tuple[list[TagSpec], dict[str, float]]:
    """The registry's tags and its layers' nominal sizes (MiB, before scaling). Pure."""
    rng = random.Random(f"plan:{seed}")
    nominal: dict[str, float] = {}
    bases = [f"base/{i}" for i in range(max(2, repositories // 10))]
    runtimes = [f"runtime/{i}" for i in range(max(3, repositories // 5))]
    base_weights = [1 / (i + 1) for i in range(len(bases))]
    profiles: dict[str, tuple[int, list[int], int, bool]] = {}
    """Repository -> (base, runtimes, builds per dependency update, Docker media types)."""

    def layer(name: str, low: float, high: float) -> str:
        if name not in nominal:
            nominal[name] = _log_uniform(rng, low, high)
        return name

    def image(name: str, r: int, build: int, architecture: str = "amd64") -> ImageSpec:
        base, stack, cadence, docker = profiles[name]
        suffix = "" if architecture == "amd64" else f"/{architecture}"
        layers = [layer(f"base/{base}{suffix}", 2, 8)]
        layers += [layer(f"runtime/{i}{suffix}", 1, 6) for i in stack]
        layers.append(layer(f"dep/{r}/{build // cadence}{suffix}", 0.5, 4))
        layers.append(layer(f"app/{r}/{build}{suffix}", 1 / 64, 2))
        if rng.random() < 0.3:
            layers.append(layer(f"extra/{r}/{build}{suffix}", 1 / 1024, 1 / 16))
        return ImageSpec(name, build, tuple(layers), architecture, docker)

    specs: list[TagSpec] = []
    for r, count in enumerate(_tag_counts(rng, repositories, tags)):
        name = f"team{r % 7}/service-{r}"
        profiles[name] = (rng.choices(range(len(bases)), base_weights)[0],
                          rng.sample(range(len(runtimes)), rng.choice((0, 1, 1, 2))),
                          rng.randint(6, 30), rng.random() < 0.3)
        images: list[ImageSpec] = []
        for build in range(count):
            if build == count - 1 and count > 1:
                specs.append(TagSpec(name, "latest", (images[-1],)))
            elif images and rng.random() < 0.08:
                specs.append(TagSpec(name, f"1.{build // 10}.{build % 10}-rebuild",
                                     (rng.choice(images),)))
            else:
                images.append(image(name, r, build))
                specs.append(TagSpec(name, f"1.{build // 10}.{build % 10}", (images[-1],)))
    # A few images become multi-arch indexes (with every tag that names them).
    singles = sorted({spec.images[0] for spec in specs}, key=lambda i: (i.repository, i.build))
    chosen = rng.sample(singles, min(len(singles), max(1, tags // 250)))
    upgraded = {amd64: (amd64, image(amd64.repository, int(amd64.repository.rsplit("-", 1)[1]),
                                     amd64.build, "arm64"))
                for amd64 in sorted(chosen, key=lambda i: (i.repository, i.build))}
    specs = [TagSpec(spec.repository, spec.tag, upgraded.get(spec.images[0], spec.images))
             for spec in specs]
    return specs, nominal


def _config(spec: ImageSpec, digests: list[str], labels: dict[str, str] | None = None) -> bytes:
    created = EPOCH + spec.build * 3600
    history = [{"created": _iso(created - 60 * (len(digests) - i)),
                "created_by": f"/bin/sh -c #(nop) ADD file:{d[7:23]} in / # layer {i}"}
               for i, d in enumerate(digests)]
    document = {
        "architecture": spec.architecture, "os": "linux", "created": _iso(created),
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                           f"SERVICE={spec.repository}"],
                   "Entrypoint": ["/usr/local/bin/service"], "WorkingDir": "/srv",
                   "Labels": {"org.opencontainers.image.source": f"https://git.example/{spec.repository}",
                              "org.opencontainers.image.revision": hashlib.sha1(
                                  f"{spec.repository}:{spec.build}".encode()).hexdigest(),
                              "build": str(spec.build), **(labels or {})}},
        "rootfs": {"type": "layers", "diff_ids": digests},  # random layers: their own digests
        "history": history,
    }
    return json.dumps(document, indent=2, sort_keys=True).encode()


def _iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _manifest(spec: ImageSpec, config: bytes, layers: list[tuple[str, int]]) -> bytes:
    media_type, config_type, layer_type = ((DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER) if spec.docker
                                           else (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER))
    return json.dumps({
        "schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": layer_type, "digest": d, "size": s} for d, s in layers],
    }, indent=3).encode()


def _index(children: list[tuple[ImageSpec, bytes]]) -> bytes:
    media_type = DOCKER_LIST if children[0][0].docker else OCI_INDEX
    child_type = DOCKER_MANIFEST if children[0][0].docker else OCI_MANIFEST
    return json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": [
        {"mediaType": child_type, "digest": _digest(data), "size": len(data),
         "platform": {"architecture": spec.architecture, "os": "linux"}}
        for spec, data in children]}, indent=3).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _parallel(workers: int, function: Callable, items: Iterable) -> list:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(function, items))


def generate(storage: StorageDriver, *, size: int = GIB, tags: int = 1000, repositories: int = 50,
             seed: int = 0, workers: int = 16, content: Content | None = None) -> Registry:
    """Write the registry into ``storage`` (assumed empty) and return what it holds."""
    started = time.monotonic()
    repositories = max(1, min(repositories, tags))
    specs, nominal = plan(seed, repositories, tags)
    images = {image for spec in specs for image in spec.images}
    budget = max(MIN_LAYER * len(nominal), size - CONFIG_ESTIMATE * len(images))
    scale = budget / sum(nominal.values())
    sizes = {name: max(MIN_LAYER, round(mib * scale)) for name, mib in nominal.items()}
    content = content or Content(seed)
    registry = Registry()

    def write_layer(name: str) -> tuple[str, str, int]:
        data = content.layer(name, sizes[name])
        digest = _digest(data)
        storage.write(layout.blob_key(digest), data)
        return name, digest, len(data)

    digests: dict[str, tuple[str, int]] = {}
    for name, digest, length in _parallel(workers, write_layer, sorted(sizes)):
        digests[name] = (digest, length)
        registry.blobs[digest] = length
        registry.layer_names[digest] = name

    documents: dict[str, bytes] = {}
    manifest_of: dict[ImageSpec, bytes] = {}
    for image in sorted(images, key=lambda i: (i.repository, i.build, i.architecture)):
        layers = [digests[name] for name in image.layers]
        config = _config(image, [digest for digest, _ in layers])
        manifest_of[image] = _manifest(image, config, layers)
        documents[_digest(config)] = config
    writes: dict[str, bytes] = {layout.blob_key(d): data for d, data in documents.items()}
    for spec in specs:
        children = [(image, manifest_of[image]) for image in spec.images]
        tops = [data for _, data in children]
        if len(children) > 1:
            tops.append(_index(children))
        for data in tops:
            digest = _digest(data)
            writes[layout.blob_key(digest)] = data
            if digest not in registry.manifests:
                registry.manifests[digest] = parse_manifest(data, digest)
        registry.tags[(spec.repository, spec.tag)] = _digest(tops[-1])
    registry.blobs.update((d, len(data)) for d, data in documents.items())
    registry.blobs.update((d, len(m.data)) for d, m in registry.manifests.items())
    _parallel(workers, lambda item: storage.write(*item), writes.items())

    links: dict[str, bytes] = {}
    for (name, tag), digest in registry.tags.items():
        for key, target in _tag_links(registry, name, tag, digest):
            links[key] = layout.link_bytes(target)
    _parallel(workers, lambda item: storage.write(*item), links.items())
    registry.links.update(links)
    registry.seconds = time.monotonic() - started
    return registry


def _tag_links(registry: Registry, name: str, tag: str, digest: str) -> tuple[tuple[str, str], ...]:
    tree: dict[str, Manifest] = {}
    pending = [digest]
    while pending:
        current = registry.manifests[pending.pop()]
        tree[current.digest] = current
        pending.extend(child.digest for child in current.children)
    return plan_tag(name, tag, digest, tree, (), registry.links).links


@dataclass(frozen=True)
class Move:
    """A tag moved by :func:`move_tag`."""

    repository: str
    tag: str
    digest: str
    new_blobs: dict[str, int]
    """Blobs (layers, config, manifest) the registry did not hold before: digest -> size."""
    new_links: tuple[str, ...]
    """Link keys written, the tag's rewritten current link last."""

    @property
    def new_bytes(self) -> int:
        return sum(self.new_blobs.values())


def move_tag(storage: StorageDriver, registry: Registry, repository: str, tag: str, *,
             new_layers: int = 2, layer_size: int = MIB, label: str = "moved",
             content: Content | None = None) -> Move:
    """Push a new image to ``repository:tag``: the tag's image (its first child, for an index)
    with its application layer replaced by ``new_layers`` new layers of ``layer_size`` bytes,
    and a new config. Only missing links are written, plus the tag's index and current links,
    as a registry push does. Updates ``registry``."""
    content = content or Content(0)
    old = registry.manifests[registry.tags[(repository, tag)]]
    if old.children:
        old = registry.manifests[old.children[0].digest]
    document = json.loads(old.data)
    spec = ImageSpec(repository, 0, (), docker=document["mediaType"] == DOCKER_MANIFEST)
    kept = [(blob.digest, blob.size) for blob in old.blobs[1:-1]]
    fresh = []
    for number in range(new_layers):
        data = content.layer(f"{label}/{repository}/{tag}/{number}", layer_size)
        digest = _digest(data)
        storage.write(layout.blob_key(digest), data)
        fresh.append((digest, len(data)))
    layers = kept + fresh
    config = _config(spec, [digest for digest, _ in layers], {"moved-by": f"{label}/{tag}"})
    manifest = _manifest(spec, config, layers)
    digest = _digest(manifest)
    new_blobs = {d: s for d, s in fresh if d not in registry.blobs}
    for data in (config, manifest):
        if _digest(data) not in registry.blobs:
            storage.write(layout.blob_key(_digest(data)), data)
            new_blobs[_digest(data)] = len(data)
    registry.manifests[digest] = parse_manifest(manifest, digest)
    registry.blobs.update(new_blobs)
    links = plan_tag(repository, tag, digest, {digest: registry.manifests[digest]}, (),
                     registry.links, registry.tags[(repository, tag)]).links
    for key, target in links:
        storage.write(key, layout.link_bytes(target))
        registry.links.add(key)
    registry.tags[(repository, tag)] = digest
    return Move(repository, tag, digest, new_blobs, tuple(key for key, _ in links))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--filesystem", metavar="DIR", help="a filesystem region's root directory")
    where.add_argument("--config", help="a replicator config file (with --region)")
    parser.add_argument("--region", help="the region of --config to write into")
    parser.add_argument("--size", type=parse_size, default=GIB, help="total blob bytes (default 1GiB)")
    parser.add_argument("--tags", type=int, default=1000, help="tags in all (default 1000)")
    parser.add_argument("--repositories", type=int, default=50, help="repositories (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--workers", type=int, default=16, help="parallel writes (default 16)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    if args.config:
        if not args.region:
            parser.error("--config needs --region")
        storage = config_module.load(args.config).regions[args.region].storage
    else:
        storage = FilesystemDriver(args.filesystem)
    registry = generate(storage, size=args.size, tags=args.tags, repositories=args.repositories,
                        seed=args.seed, workers=args.workers)
    summary = registry.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{storage.describe()}: {summary['repositories']} repositories, {summary['tags']} tags "
              f"({summary['indexes']} multi-arch), {summary['blobs']} blobs "
              f"({summary['layers']} layers, median {human(summary['median_layer'])}, largest "
              f"{human(summary['largest_layer'])}), {human(summary['bytes'])} of blobs, "
              f"{summary['links']} links, in {summary['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
