"""Every flagfile starts with the same header: the command, what it runs, its runtime on a named machine and date, and
what a fresh run gives (with its tolerance and machine) or why that was not re-measured."""

from __future__ import annotations

import re

import pytest

from tests.experiments.conftest import FLAGFILES

NAMES = sorted(p.stem for p in FLAGFILES.glob("*.flags"))
MACHINE = re.compile(r"CPU|H100|H200|GPU")
DATE = re.compile(r"20\d\d-\d\d-\d\d")


def header(name: str) -> list[str]:
    lines = (FLAGFILES / f"{name}.flags").read_text().splitlines()
    return [line for line in lines if line.startswith("#")]


@pytest.mark.parametrize("name", NAMES)
def test_flagfile_header(name):
    lines = (FLAGFILES / f"{name}.flags").read_text().splitlines()
    assert all(line.startswith(("#", "--")) for line in lines if line.strip()), "comments, then one flag a line"
    head = header(name)
    assert lines[: len(head)] == head, "the header comes first"
    assert re.match(r"# (PYTHONPATH=\. )?python -m experiments\.\w+ ", head[0]), head[0]
    assert f"--flagfile=experiments/flags/{name}.flags" in " ".join(head[:2])
    fields = [next((i for i, line in enumerate(head) if line.startswith(f"# {f}")), None) for f in
              ("What:", "Runtime:", "Expected")]  # fmt: skip
    assert None not in fields and fields == sorted(fields), f"{name}: # What:, # Runtime:, # Expected, in order"
    what, runtime, expected = ("\n".join(head[a:b]) for a, b in zip(fields, [*fields[1:], len(head)]))
    assert MACHINE.search(runtime) and DATE.search(runtime), f"{name}: the runtime names its machine and date"
    measured = "measured" in expected.lower() and MACHINE.search(expected + runtime) and DATE.search(expected + runtime)
    assert measured, f"{name}: the expected result says where and when it was measured, or that it was not"
