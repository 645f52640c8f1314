"""Joining a label file's rows to the cases found on disk: what matched, what did not, and why.

A label file whose ids are written differently from the case folders (``synth-000`` for folder ``synth_000``,
``Synth_000``) would otherwise leave every case unlabelled without a word. :func:`check_label_join` counts and logs
the rows that match no case and the cases that have no row, and stops when no row matches at all.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from os import PathLike

from ..errors import DatasetError

__all__ = ["check_label_join"]

logger = logging.getLogger(__name__)


def _loose(case_id: str) -> str:
    """An id with case, surrounding spaces and the separators ``-``, ``_``, ``.`` and space ignored."""
    return re.sub(r"[-_.\s]+", "_", case_id.strip().lower())


def _few(ids: Collection[str], n: int) -> str:
    shown = sorted(ids)[:n]
    return ", ".join(f"'{i}'" for i in shown) + (f", ... ({len(ids)} in all)" if len(ids) > n else "")


def _near_misses(rows: Collection[str], cases: Collection[str], n: int, unit: str) -> str:
    """``'synth-000' vs 'synth_000'`` (row vs case) pairs of ids that differ only in case or separators."""
    by_loose = {_loose(c): c for c in cases}
    pairs = [(r, by_loose[_loose(r)]) for r in sorted(rows) if _loose(r) in by_loose]
    if not pairs:
        return ""
    shown = ", ".join(f"'{r}' vs '{c}'" for r, c in pairs[:n])
    return (
        f" {len(pairs)} row id(s) differ from a {unit} id only in upper/lower case or '-'/'_'/'.' ({shown}): "
        f"rename them to the {unit} ids exactly."
    )


def check_label_join(
    label_file: str | PathLike,
    row_ids: Collection[str],
    case_ids: Collection[str],
    what: str = "label",
    unit: str = "case",
    examples: int = 5,
) -> tuple[list[str], list[str]]:
    """Count and report how a label file's rows matched the data set's cases.

    Logs a warning with counts and a few ids for rows that match no case and for cases that have no row (their
    label is unknown); ids that differ only in upper/lower case or separators are pointed out.

    Args:
        label_file: the label file (for messages).
        row_ids: the case ids of the file's rows.
        case_ids: the case ids found on disk.
        what: what the file gives, for messages (e.g. ``"'idh'"``).
        unit: what a case is, for messages (e.g. ``"image"``).
        examples: how many ids a message shows at most.

    Returns:
        (ids of rows matching no case, ids of cases without a row), sorted.

    Raises:
        DatasetError: the file has rows and the data set cases, but no row matches any case; the message names
            the file and shows a few ids from each side.
    """
    if examples < 1:
        raise ValueError(f"examples must be >= 1, got {examples}.")
    rows, cases = set(row_ids), set(case_ids)
    unmatched = sorted(rows - cases)
    unlabelled = sorted(cases - rows)
    if rows and cases and not rows & cases:
        raise DatasetError(
            f"file {label_file}: none of its {len(rows)} row(s) matches any of the {len(cases)} {unit}(s) of the data "
            f"set, so every {unit} would have an unknown {what}. Row ids: {_few(rows, examples)}; {unit} ids: "
            f"{_few(cases, examples)}.{_near_misses(rows, cases, examples, unit)} The first column must hold the "
            f"{unit} ids exactly as the {unit} folders/files are named."
        )
    if unmatched:
        logger.warning(
            f"file {label_file}: {len(unmatched)} of {len(rows)} row(s) match no {unit} of the data set and are not "
            f"used: {_few(unmatched, examples)}.{_near_misses(unmatched, unlabelled, examples, unit)}"
        )
    if unlabelled and rows:
        logger.warning(
            f"{len(unlabelled)} of {len(cases)} {unit}(s) have no row in file {label_file}; their {what} is unknown: "
            f"{_few(unlabelled, examples)}."
        )
    return unmatched, unlabelled
