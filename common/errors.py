"""The exception raised for every problem found in a data set (files, layout, labels).

The base layer of the package: it imports nothing from ``common``, so every subpackage can raise it.
"""

from __future__ import annotations

from os import PathLike

__all__ = ["DatasetError", "case_error"]


class DatasetError(ValueError):
    """A problem with the data on disk: missing or unreadable file, bad shape or voxels, unknown labels.

    The message always names what is wrong and, where known, the case and the file, so that a user can fix the
    data without reading a traceback.
    """


def case_error(case: str | None, path: str | PathLike | None, problem: str) -> DatasetError:
    """Build a :class:`DatasetError` whose message reads ``case '<case>', file <path>: <problem>``."""
    parts = []
    if case is not None:
        parts.append(f"case '{case}'")
    if path is not None:
        parts.append(f"file {path}")
    where = ", ".join(parts)
    return DatasetError(f"{where}: {problem}" if where else problem)
