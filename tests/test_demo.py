"""``replicator demo``: the embedded default runs end to end on a fresh folder and leaves a
configuration the commands it suggests work on."""

import subprocess
import sys

from tests.test_e2e_sync import REPO_ROOT


def test_demo_replicates_and_verifies_both_regions(tmp_path):
    result = subprocess.run([sys.executable, "-m", "replicator", "demo", "--workdir",
                             str(tmp_path / "demo")], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "Second pass: 0 objects copied (nothing changed at the source)." in lines
    verified = [line for line in lines if line.startswith("Verified ")]
    assert len(verified) == 2 and all(line.endswith(", 0 problems.") for line in verified)
    assert "Demo OK: every region serves the same digests." in lines
    config = tmp_path / "demo" / "replicator.yml"
    assert f"The configuration is in {config}. Next, try:" in lines
    commands = [line.split("#")[0].split() for line in lines if line.startswith("  replicator ")]
    assert [command[1] for command in commands] == ["status", "verify", "wait", "history", "sync",
                                                    "serve"]
    outputs = {}
    for command in commands[:5]:   # each works as printed, on the demo's own configuration
        result = subprocess.run([sys.executable, "-m", "replicator", *command[1:]],
                                capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
                                check=False)
        assert result.returncode == 0, (command, result.stdout + result.stderr)
        outputs[command[1]] = result.stdout
    changes = outputs["history"].splitlines()
    assert len(changes) == 4   # demo/web:1.0 and demo/web:multi created in each of two regions
    assert all("  create  demo/web:" in line for line in changes), changes
