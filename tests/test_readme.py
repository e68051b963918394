"""The README stays true: its key table matches the config declarations, CI runs its test command."""

import subprocess
from pathlib import Path

from hbl_mpi.core.config import readme_key_table

ROOT = Path(__file__).resolve().parent.parent


def test_readme_documents_every_config_key():
    readme = (ROOT / "README.md").read_text()
    for line in readme_key_table().splitlines():
        assert line in readme, f"README key table is stale; missing: {line}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    first_blocks = readme.split("<!-- test-command -->", 1)
    assert len(first_blocks) == 2
    cmd = first_blocks[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    assert "pytest" in cmd and "torch==2.13.0" in cmd
    ci = (ROOT / ".ci/run").read_text()
    assert "test-command" in ci
    assert subprocess.run(["bash", "-n", str(ROOT / ".ci/run")]).returncode == 0
