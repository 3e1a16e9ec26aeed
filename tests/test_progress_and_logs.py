import io
import json
import logging
import subprocess
import sys

from drivers.filesystem import FilesystemDriver
from replicator import sample_images
from replicator.demo import publish
from replicator.logs import JsonFormatter
from replicator.progress import Progress
from replicator.report import PassReport
from tests.test_engine import write_filesystem_config


def test_progress_line_shows_tags_blobs_bytes_and_rate():
    stream = io.StringIO()
    progress = Progress(stream)
    report = PassReport("prod", "us", "eu")
    progress.start_pass(report, [("a", "1"), ("a", "2"), ("b", "1"), ("c", "1")])
    report.count("tags_replicated", 2)
    report.count("blobs_copied", 5)
    report.count("bytes_copied", 3 * 1024 * 1024)
    progress.close()
    final = stream.getvalue().split("\r\x1b[2K")[-1]
    assert final.startswith("prod -> eu: 2/4 tags of 3 repositories, 5 blobs, 3.0 MiB (")
    assert final.endswith("/s)\n")


def test_progress_adds_up_a_policy_s_passes_running_at_once():
    stream = io.StringIO()
    progress = Progress(stream)
    eu, ap = PassReport("prod", "us", "eu"), PassReport("prod", "us", "ap")
    tags = [("a", "1"), ("b", "1")]
    progress.start_pass(eu, tags)
    progress.start_pass(ap, tags)
    eu.count("tags_replicated", 2)
    ap.count("tags_replicated", 1)
    ap.count("blobs_copied", 3)
    progress.close()
    lines = [line for line in stream.getvalue().split("\r\x1b[2K") if line.endswith("\n")]
    assert len(lines) == 1 and lines[0].startswith("prod -> eu, ap: 3/4 tags of 2 repositories, 3 blobs")


def test_json_log_lines_carry_the_replication_fields():
    record = logging.LogRecord("replicator.engine", logging.WARNING, __file__, 1, "failed %s", ("x",), None)
    record.repository, record.tag, record.digest = "app", "1.0", "sha256:" + "a" * 64
    document = json.loads(JsonFormatter().format(record))
    assert document["message"] == "failed x" and document["level"] == "warning"
    assert (document["repository"], document["tag"], document["digest"]) == ("app", "1.0", "sha256:" + "a" * 64)
    assert "policy" not in document


def test_no_progress_when_not_a_terminal_and_json_logs_on_request(tmp_path):
    publish(FilesystemDriver(str(tmp_path / "src")), "app", "1.0",
            sample_images.image([sample_images.layer({"a": b"a"})]))
    path = write_filesystem_config(tmp_path)
    result = subprocess.run([sys.executable, "-m", "replicator", "--log-level", "info", "--log-format",
                             "json", "sync", "--config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0
    assert "\r" not in result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    replicated = [line for line in lines if line["logger"] == "replicator.engine"]
    assert replicated and replicated[0]["repository"] == "app" and replicated[0]["destination"] == "dst"
