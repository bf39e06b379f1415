"""Fixtures of the experiments' tests: a command line run in-process, the quick flagfiles."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from absl import app, flags

from experiments import common

ROOT = Path(__file__).resolve().parents[2]
FLAGFILES = ROOT / "experiments" / "flags"


@pytest.fixture
def cli(capsys):
    """``cli(main, *argv) -> (exit status, stderr + stdout)``: an experiment's ``main`` as ``app.run`` runs it, in this
    process (its compiled programs stay for the next test): the flags parsed from ``argv``, library errors
    mapped to exit statuses by ``common.run_main``, a usage error's exit status and message as absl reports
    them. The flags are reset afterwards."""

    def run_cli(main_fn, *argv: str) -> tuple[int, str]:
        flags.FLAGS.unparse_flags()
        try:
            flags.FLAGS(["experiment", *argv])
            common.run_main(main_fn)(["experiment"])
            status = 0
        except app.UsageError as e:
            print(e, file=sys.stderr)
            status = e.exitcode
        except SystemExit as e:
            status = e.code or 0
        finally:
            flags.FLAGS.unparse_flags()
        captured = capsys.readouterr()
        return status, captured.err + captured.out

    return run_cli
