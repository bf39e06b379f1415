"""The README's library examples run as written, and the first prints a reward trajectory that rises."""

from __future__ import annotations

import re
from pathlib import Path

from experiments.lib import car_count

ROOT = Path(__file__).resolve().parents[1]


def library_blocks() -> list[str]:
    """The ```python blocks of the README's "As a library" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### As a library") :]
    section = section[: section.index("\n## ")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_library_examples_run_and_learn(tmp_path, monkeypatch, capsys):
    blocks = library_blocks()
    assert len(blocks) == 3, "the gmm loop, the managed run, the experiment as a function"
    monkeypatch.chdir(tmp_path)  # the managed run writes workdirs/gmm_lib here
    namespace: dict = {"__name__": "readme"}
    exec(compile(blocks[0], "README.md: As a library, block 1", "exec"), namespace)
    printed = capsys.readouterr().out
    accuracy = [float(a) for a in re.findall(r"iteration +\d+: validation accuracy ([0-9.]+)", printed)]
    assert len(accuracy) == 11 and "iteration  99:" in printed, printed
    assert accuracy[-1] > accuracy[0] + 0.15, accuracy  # the user sees it learn
    assert "c0_g0=N(" in printed  # the learned psi, readable

    exec(compile(blocks[1], "README.md: As a library, block 2", "exec"), namespace)
    workdir = tmp_path / "workdirs" / "gmm_lib"
    assert len(namespace["history"]) == 100 and (workdir / "metrics.jsonl").exists()
    assert "--learning_rate=0.2" in (workdir / "flags.txt").read_text()  # stored without a hand-made dict
    assert (workdir / "rewards.png").exists() and (workdir / "params.png").exists()

    # The experiment as a function: not run here (minutes); the names and settings it uses exist.
    code = compile(blocks[2], "README.md: As a library, block 3", "exec")
    assert {"CarCountConfig", "train_and_evaluate"} <= set(code.co_names)
    car_count.CarCountConfig(height=48, width=160, num_iterations=30)
