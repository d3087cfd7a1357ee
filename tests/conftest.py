"""Shared fixtures for the trace tests: the real Mooncake trace, the CLI run in-process, small traces."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.cli import main

REPO = Path(__file__).resolve().parents[1]
MOONCAKE_REL = "data/mooncake/conversation_trace.jsonl.gz"


def shared_dir() -> Path:
    """`$DUALPATH_SHARED` if set, else `../shared/` beside the checkout."""
    env = os.environ.get("DUALPATH_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def mooncake_path() -> Path:
    path = shared_dir() / MOONCAKE_REL
    if not path.is_file():
        pytest.fail(f"the Mooncake conversation trace is missing: expected {path} (set DUALPATH_SHARED to "
                    "the folder holding data/mooncake/, or put shared/ beside the checkout)", pytrace=False)
    return path


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    """Progress bars off, so stderr holds only what the command says."""
    monkeypatch.setenv("DUALPATH_PROGRESS", "0")


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()

    def json(self) -> dict:
        obj = json.loads(self.out)
        assert isinstance(obj, dict), f"stdout is not one JSON object: {self.out[:200]!r}"
        return obj


@pytest.fixture
def cli(capsys):
    """Run `dualpath ARGS...` in-process; return its exit code, stdout and stderr."""
    def run(*args) -> Result:
        capsys.readouterr()  # drop anything earlier
        try:
            rc = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's --help
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return Result(rc, out, err)
    return run


def write_lines(path: Path, lines) -> Path:
    """Write JSON lines (dicts are dumped, strings written as they are)."""
    with open(path, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def leftovers(directory: Path, keep=()) -> list[str]:
    """Files in `directory` other than `keep` (temp files of an interrupted write would show here)."""
    return sorted(p.name for p in directory.iterdir() if p.name not in set(keep))
