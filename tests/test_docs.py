"""The repository stands on its own: its design and method notes are in it (WORKSPACE.md), nothing points a reader
at files a clone lacks, and the tests find the real data through one documented variable."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / line for line in out.stdout.splitlines() if (ROOT / line).is_file()]


def test_no_pointer_to_notes_outside_the_repository():
    files = [p for p in tracked("*.py", "*.md", "*.flags", "*.cfg", "*.toml")
             if "experiments/results" not in str(p) and p.name != "test_docs.py"]  # fmt: skip
    assert files
    for path in files:
        text = path.read_text(errors="replace")
        for name in ("PAPER.md", "DESIGN.md", "shared/PAPER", "shared/DESIGN"):
            assert name not in text, f"{path.relative_to(ROOT)} points to {name}, which a clone lacks"


def test_workspace_holds_the_method_and_the_design():
    text = (ROOT / "WORKSPACE.md").read_text()
    for heading in ("## The method", "## Design", "## Layout", "## Add a simulator", "## Add a task"):
        assert heading in text, heading
    for fact in ("Algorithm 1", "REINFORCE", "sigma^2 = 0.05", "AMTM", "R(S(rho | psi), P(phi | psi))", "Table 1"):
        assert fact in text, fact


def test_real_data_only_through_lts_data_dir():
    readme = (ROOT / "README.md").read_text()
    assert "LTS_DATA_DIR" in readme and "LTS_DATA_DIR" in (ROOT / "WORKSPACE.md").read_text()
    for path in tracked("tests/*.py", "tests/**/*.py"):
        if path.name in ("conftest.py", "test_docs.py"):
            continue
        assert "shared/data" not in path.read_text(), f"{path.relative_to(ROOT)}: use tests.conftest.real_data_dir"
