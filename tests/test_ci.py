"""The versions CI tests with are recorded (.ci/constraints*.txt), used by .ci/run for the Python running it, and
agree with setup.cfg's ranges; setup.cfg pins nothing that excludes Python 3.11 or 3.12."""

from __future__ import annotations

import configparser
import os
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
RECORDS = {"3.11": ROOT / ".ci" / "constraints.txt", "3.12": ROOT / ".ci" / "constraints-3.12.txt"}


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            out[canonicalize_name(name)] = version
    return out


def requirements() -> list[Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in ("test", "carla"):
        lines += cfg["options.extras_require"][extra].splitlines()
    return [Requirement(line.split("#", 1)[0].strip()) for line in lines if line.split("#", 1)[0].strip()]


@pytest.mark.parametrize("python", sorted(RECORDS))
def test_records_pin_every_requirement_within_its_range(python):
    recorded = pins(RECORDS[python])
    for req in requirements():
        name = canonicalize_name(req.name)
        assert name in recorded, f"{RECORDS[python].name} lacks {req.name}"
        assert req.specifier.contains(recorded[name], prereleases=True), (req, recorded[name])


def test_ci_run_uses_the_record_of_its_python():
    script = (ROOT / ".ci" / "run").read_text()
    for python, path in RECORDS.items():
        assert f"{python}) CONSTRAINTS=(-c .ci/{path.name})" in script
    assert "pip install -e '.[test,carla]'" in script and "python -m pytest -q -n 2" in script


def test_setup_cfg_admits_python_3_11_and_3_12():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["options"]["python_requires"].strip() == ">=3.11"
    for req in requirements():  # no upper bound on the libraries whose new releases follow new Pythons
        if canonicalize_name(req.name) in ("jax", "flax", "optax", "numpy", "scikit-learn", "orbax-checkpoint"):
            assert all(s.operator in (">=", ">") for s in req.specifier), req


@pytest.mark.skipif(not os.environ.get("CI"), reason="CI's fresh environment only (.ci/run sets CI=true)")
def test_ci_environment_has_the_recorded_versions():
    record = RECORDS.get(f"{sys.version_info[0]}.{sys.version_info[1]}")
    if record is None:
        pytest.skip("no record for this Python: installed unconstrained")
    for name, version in pins(record).items():
        assert metadata.version(name) == version, name
