"""Before the first annotation comes back: the stages after ``convert`` wait, and say so.

A curator's first ``dvc repro`` on a new archive retrieves, anonymizes and exports; nobody has
annotated anything yet. Every stage after ``convert`` then still runs (DVC runs a pipeline
whole) but writes its declared outputs in a *waiting* form, says one line, and exits 0, so
``dvc repro`` ends cleanly after export instead of failing in ``split``:

- ``split`` finds no annotated image in ``images.csv``: ``splits.json`` carries
  :data:`KEY` (the reason, in words) with an empty test set and empty folds;
- ``train`` finds :data:`KEY` in ``splits.json``: its run folder holds only ``metrics.json``,
  with :data:`KEY` and no score;
- ``evaluate``, ``propose``, ``to-seg`` and ``report`` find :data:`KEY` in what they read
  (the run's ``metrics.json``, the evaluation's ``summary.json``) and write empty outputs
  carrying it.

Once annotations arrive, ``convert``'s output changes and everything after it runs for real
(the waiting outputs were never a result: DVC re-runs every stage whose inputs changed).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from converters.core.errors import SpinepipeError
from converters.core.records import read_json

#: the key every waiting output carries; its value says why, in words
KEY = "waiting_for_annotations"


def reason_in(record: object) -> str | None:
    """The waiting reason a stage's record (a JSON object) carries, else ``None``."""
    if isinstance(record, Mapping) and isinstance(record.get(KEY), str) and record[KEY]:
        return record[KEY]
    return None


def reason_in_file(path: str | Path) -> str | None:
    """The waiting reason of a JSON file an earlier stage wrote; ``None`` when the file is
    missing or not waiting (the stage then reads it as usual, with its own errors)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return reason_in(read_json(path, what="record"))
    except SpinepipeError:  # unreadable: the stage's own reader names the fault
        return None
