import os
import shutil

import pytest

from drivers import filesystem_walk
from drivers.errors import InvalidKey, StorageError
from drivers.filesystem import TEMP_DIR, FilesystemDriver
from tests.conformance import DriverConformance, assert_config_error, listed, too_deep, write_all


class TestFilesystem(DriverConformance):
    @pytest.fixture
    def driver(self, tmp_path):
        return FilesystemDriver.from_config({"rootdirectory": str(tmp_path / "root")})


@pytest.fixture
def root(tmp_path):
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


def test_from_config_defaults_and_distribution_keys():
    assert FilesystemDriver.from_config({}).describe() == "filesystem:/var/lib/registry"
    driver = FilesystemDriver.from_config({"rootdirectory": "/srv/registry", "maxthreads": 100})
    assert driver.describe() == "filesystem:/srv/registry"


@pytest.mark.parametrize("params, field", [
    ({"rootdirectory": "/r", "bogus": 1}, "bogus"),
    ({"rootdirectory": 5}, "rootdirectory"),
    ({"maxthreads": "many"}, "maxthreads"),
    ({"maxthreads": True}, "maxthreads"),
])
def test_from_config_errors_name_the_key(params, field):
    assert_config_error(FilesystemDriver, params, field)


def test_symlinks_out_of_the_root_are_not_followed(tmp_path, root):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (root / "linked-dir").symlink_to(outside)
    (root / "linked-file").symlink_to(outside / "secret")
    driver = FilesystemDriver(str(root))
    driver.write("real", b"x")

    assert listed(driver) == ["real"]
    assert [info.key for page in driver.list_ahead() for info in page] == ["real"]
    assert list(driver.list("linked-dir/")) == []
    assert list(driver.list_ahead("linked-dir/")) == []
    for key in ("linked-dir/secret", "linked-file"):
        with pytest.raises(InvalidKey):
            driver.read(key)
        with pytest.raises(InvalidKey):
            driver.stat(key)
    with pytest.raises(InvalidKey):
        driver.write("linked-dir/planted", b"x")
    assert sorted(os.listdir(outside)) == ["secret"]


def test_a_directory_seen_real_vouches_for_no_symlink_below_it(tmp_path, root):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    driver = FilesystemDriver(str(root))
    driver.write("repo/real/data", b"x")
    (root / "repo" / "linked").symlink_to(outside)
    (root / "repo" / "real" / "linked-file").symlink_to(outside / "secret")
    (root / "repo" / "inside").symlink_to(root / "repo" / "real")
    for key in ("repo/linked/secret", "repo/real/linked-file"):
        with pytest.raises(InvalidKey):
            driver.read(key)
    with pytest.raises(InvalidKey):
        driver.write("repo/linked/planted", b"x")
    assert driver.read("repo/inside/data") == b"x"
    assert sorted(os.listdir(outside)) == ["secret"]


def test_a_write_or_delete_at_a_symlinked_key_acts_on_the_link_not_its_target(tmp_path, root):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (root / "repo").mkdir()
    (root / "repo" / "overwritten").symlink_to(outside / "secret")
    (root / "repo" / "deleted").symlink_to(outside / "secret")
    driver = FilesystemDriver(str(root))

    driver.write("repo/overwritten", b"replica")
    driver.delete("repo/deleted")

    assert (outside / "secret").read_bytes() == b"secret"
    assert not (root / "repo" / "overwritten").is_symlink()
    assert driver.read("repo/overwritten") == b"replica"
    assert not os.path.lexists(root / "repo" / "deleted")


def test_temp_area_is_neither_listed_nor_addressable(root):
    (root / TEMP_DIR).mkdir()
    (root / TEMP_DIR / "crash-leftover").write_bytes(b"half a blob")
    driver = FilesystemDriver(str(root))
    assert list(driver.list()) == []
    assert list(driver.list(f"{TEMP_DIR}/")) == []
    with pytest.raises(InvalidKey):
        driver.write(f"{TEMP_DIR}/crash-leftover", b"x")


def test_writer_leaves_no_temp_file(root):
    driver = FilesystemDriver(str(root))
    driver.write("a", b"x")
    with driver.writer("b") as writer:
        writer.write(b"y")
    assert os.listdir(root / TEMP_DIR) == []


def test_delete_removes_empty_parent_directories(root):
    driver = FilesystemDriver(str(root))
    driver.write("a/b/c/key", b"x")
    driver.write("a/other", b"y")
    driver.delete("a/b/c/key")
    assert not (root / "a" / "b").exists()
    assert (root / "a" / "other").exists()
    driver.delete("a/other")
    assert not (root / "a").exists()
    assert root.is_dir()


def test_stale_temporary_files_are_swept_and_fresh_ones_kept(tmp_path):
    driver = FilesystemDriver(str(tmp_path))
    stale = driver.writer("blobs/stale")
    stale.write(b"killed mid-copy")
    fresh = driver.writer("blobs/fresh")
    fresh.write(b"still being written")
    temp = tmp_path / TEMP_DIR
    [stale_file] = [path for path in temp.iterdir() if str(path) == stale._temp]
    os.utime(stale_file, (0, 0))
    assert driver.sweep_abandoned_uploads("blobs/", older_than=3600) == 1
    assert [str(path) for path in temp.iterdir()] == [fresh._temp]
    fresh.abort()
    stale.abort()
    assert driver.sweep_abandoned_uploads("blobs/", older_than=0) == 0


def test_a_listing_ahead_walks_in_a_process_of_its_own_before_it_is_read(root, walks):
    driver = FilesystemDriver(str(root))
    keys = [f"r/{i:03}/_layers/link" for i in range(300)]
    write_all(driver, keys)
    pages = driver.list_ahead("r/")
    [child] = walks
    assert child.wait(timeout=60) == 0
    shutil.rmtree(root / "r")
    assert [info.key for page in pages for info in page] == keys
    assert listed(driver) == []


def test_a_listing_ahead_closed_or_dropped_early_leaves_no_process(root, walks):
    driver = FilesystemDriver(str(root))
    write_all(driver, [f"k{i:04}" for i in range(2500)])
    read_once = driver.list_ahead()
    assert len(next(read_once)) == 1000
    read_once.close()
    driver.list_ahead().close()
    driver.list_ahead()
    assert len(walks) == 3
    assert all(child.returncode is not None for child in walks)


def test_a_walk_that_fails_in_its_own_process_fails_as_the_listing_in_the_callers_does(root, walks):
    driver = FilesystemDriver(str(root))
    driver.write("a", b"x")
    too_deep(root)
    with pytest.raises(StorageError) as in_process:
        listed(driver)
    with pytest.raises(StorageError) as ahead:
        list(driver.list_ahead())
    assert type(ahead.value) is type(in_process.value)
    assert str(ahead.value) == str(in_process.value)
    assert "name too long" in str(ahead.value)
    assert [child.returncode for child in walks] == [filesystem_walk.WALK_FAILED]
