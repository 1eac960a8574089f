"""Where the local evaluation data lives, and clear errors when a file is missing.

Resolution order for the data directory:

1. an explicit ``data_dir`` argument (``run_report(data_dir=...)``, ``--data-dir``, or lm-eval task
   metadata ``{"data_dir": ...}``, e.g. ``lm_eval --metadata '{"data_dir": "/data"}'``);
2. the environment variable ``LINEARIZE_DATA``;
3. ``../shared/data`` relative to the repository root (the folder holding ``linearize/`` and ``eval/``).
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "LINEARIZE_DATA"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


class DataFileMissing(FileNotFoundError):
    """A file an offline task needs is not in the data directory."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory to read from (argument > $LINEARIZE_DATA > ../shared/data)."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_DIR


def data_file(relpath: str, data_dir: str | os.PathLike | None = None) -> Path:
    """``<data_dir>/<relpath>``; raises :class:`DataFileMissing` naming the file if it is absent."""
    root = resolve_data_dir(data_dir)
    path = root / relpath
    if not path.is_file():
        raise DataFileMissing(
            f"missing data file {path} (data dir {root}; set it with --data-dir, data_dir=..., "
            f"or the {ENV_VAR} environment variable)"
        )
    return path
