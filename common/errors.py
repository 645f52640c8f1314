"""The exception raised for every problem found in a data set (files, layout, labels), and how a run reports it.

The base layer of the package: it imports nothing from ``common``, so every subpackage can raise it.

- :func:`case_error` builds the message ``case '<case>', file <path>: <problem>``;
- :func:`read_error` says what is wrong with a file that could not be read (missing, empty, not gzip, truncated,
  damaged, not an image) and what to do; every reader of images and volumes uses it;
- :func:`install_error_hook` (the first ``initialize`` entry of every bundle config) makes a :class:`DatasetError`
  the last line a user sees, with exit code 1; ``MTL_DEBUG=1`` shows the full traceback too.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import re
import sys
import zlib
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "DEBUG_ENV",
    "BundleError",
    "DatasetError",
    "SettingsError",
    "case_error",
    "dataset_error_message",
    "install_error_hook",
    "read_error",
    "register_exit_cleanup",
    "user_error_line",
]

#: Environment variable that, set to anything but ``""``/``"0"``, shows the full traceback of a data error.
DEBUG_ENV = "MTL_DEBUG"

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_NIFTI_MAGICS = (b"n+1\x00", b"ni1\x00", b"n+2\x00", b"ni2\x00")
_WHAT_TO_DO = "replace it with an intact copy (copy or download it again) or remove the case from the data set."
# a DatasetError re-raised from a DataLoader worker process survives only as text in the message of another error
_ERROR_LINE = re.compile(r"^(?:common\.errors\.)?DatasetError: (.+)$", re.MULTILINE)
# what the error hook runs before it ends the process (os._exit skips atexit): e.g. releasing a run lock
_EXIT_CLEANUPS: list[Callable[[], Any]] = []


def register_exit_cleanup(cleanup: Callable[[], Any]) -> None:
    """Run ``cleanup`` also when :func:`install_error_hook` ends a failed run (``os._exit`` skips ``atexit``)."""
    _EXIT_CLEANUPS.append(cleanup)


class BundleError(Exception):
    """A problem the user fixes in the data or the settings, not in the code: a bundle run ends with its message as
    the last line (see :func:`install_error_hook`)."""


class SettingsError(BundleError, ValueError):
    """A setting that does not fit: an unknown strategy or method name, a model trained with other settings, no
    trained model where one is needed. The message names the setting and what to do."""


class DatasetError(BundleError, ValueError):
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


def _gzip_problem(path: Path) -> str | None:
    """What is wrong with the gzip stream of ``path``, or None when it decompresses completely."""
    try:
        with gzip.open(path, "rb") as handle:
            head = handle.read(352)
            while handle.read(1 << 20):
                pass
    except EOFError:
        return "is truncated: its compressed data ends early (an interrupted download or copy?)"
    except (gzip.BadGzipFile, zlib.error, OSError) as err:
        return f"is damaged: its compressed data is corrupt ({err})"
    if path.name.lower().endswith(".nii.gz") and len(head) < 348:
        return f"is truncated: its data ({len(head)} bytes) is shorter than a NIfTI header (348 bytes)"
    if path.name.lower().endswith(".nii.gz") and head[344:348] not in _NIFTI_MAGICS:
        return "is not a NIfTI volume: its compressed data holds no NIfTI header"
    return None


def _read_problem(path: Path, err: BaseException) -> str:
    """What is wrong with a file that ``err`` stopped from being read, as far as its bytes tell."""
    name = path.name.lower()
    nifti = name.endswith(_NIFTI_SUFFIXES)
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return f"is a folder, not a {'NIfTI volume' if nifti else 'file'}"
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    with path.open("rb") as handle:
        head = handle.read(352)
    if name.endswith(".gz"):
        if head[:2] != b"\x1f\x8b":
            if head[344:348] in _NIFTI_MAGICS:
                return "is named .gz but is not gzip-compressed (it is an uncompressed NIfTI file: rename it to .nii)"
            return "is named .gz but is not gzip-compressed"
        problem = _gzip_problem(path)
        if problem is not None:
            return problem
    elif nifti and len(head) < 348:
        return f"is truncated: {size} bytes, shorter than a NIfTI header (348 bytes)"
    elif nifti and head[344:348] not in _NIFTI_MAGICS:
        return "is not a NIfTI volume: it has no NIfTI header"
    text = str(err).lower()
    if isinstance(err, EOFError) or "truncated" in text or re.search(r"expected \d+ bytes, got \d+", text):
        return "is truncated: the file ends before its image data does (an interrupted download or copy?)"
    if type(err).__name__ in ("UnidentifiedImageError", "ImageFileError"):
        return "is not an image file in a format that can be read" + (" (expected NIfTI)" if nifti else "")
    return "cannot be read"


def read_error(case: str | None, path: str | PathLike, err: BaseException) -> DatasetError:
    """A :class:`DatasetError` for a file that ``err`` stopped from being read: which case and file, what is wrong
    with the file (missing, empty, not gzip, truncated, damaged, not an image), the reader's own words, what to do.

    Example: ``case 'synth_001', file /data/synth_001/synth_001_t1ce.nii.gz: is truncated: its compressed data ends
    early (an interrupted download or copy?) (EOFError: Compressed file ended before ...); replace it with an intact
    copy (copy or download it again) or remove the case from the data set.``
    """
    try:
        problem = _read_problem(Path(path), err) if isinstance(path, (str, PathLike)) else "cannot be read"
    except OSError as inner:  # the file cannot even be opened (permissions, I/O error)
        problem = f"cannot be opened ({inner})"
    detail = (str(err).strip().splitlines() or [""])[0]
    detail = detail if len(detail) <= 200 else detail[:197] + "..."
    todo = "check the path and the data set listing." if problem == "does not exist" else _WHAT_TO_DO
    return case_error(case, path, f"{problem} ({type(err).__name__}: {detail}); {todo}")


def dataset_error_message(exc: BaseException | None) -> str | None:
    """The message of the :class:`DatasetError` behind ``exc`` (followed through ``__cause__``/``__context__``,
    as MONAI and ignite wrap it), or None when there is none.

    A DatasetError raised in a ``DataLoader`` worker process reaches the main process only as text (torch re-raises
    the outermost error's type with the worker's traceback as message); its last ``DatasetError: ...`` line is used.
    """
    seen: set[int] = set()
    chain = []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DatasetError):
            return str(exc)
        chain.append(exc)
        exc = exc.__cause__ if exc.__cause__ is not None else exc.__context__
    for item in chain:
        found = _ERROR_LINE.findall(str(item))
        if found:
            return found[-1].strip()
    return None


def user_error_line(exc: BaseException | None) -> str | None:
    """``"<ErrorType>: <message>"`` of the :class:`BundleError` behind ``exc`` (a DatasetError also when it reached
    the main process as a DataLoader worker's text), or None when the failure is not one the user fixes."""
    seen: set[int] = set()
    item = exc
    while item is not None and id(item) not in seen:
        seen.add(id(item))
        if isinstance(item, BundleError) and not isinstance(item, DatasetError):
            return f"{type(item).__name__}: {item}"
        item = item.__cause__ if item.__cause__ is not None else item.__context__
    message = dataset_error_message(exc)
    return None if message is None else f"DatasetError: {message}"


def _debug_requested(debug: bool | None) -> bool:
    return debug if debug is not None else os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def _quiet_records(previous: Callable[..., logging.LogRecord], debug: bool | None) -> Callable[..., logging.LogRecord]:
    """A log record factory that shortens records of a DatasetError to one line (no traceback) unless debugging.

    MONAI's ``StatsHandler`` logs every engine exception with its traceback (and ignite the exception's text, which
    from a ``DataLoader`` worker holds the worker's traceback): 60-180 lines before the error hook's last line.
    """

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        exc = record.exc_info[1] if record.exc_info else None
        if (exc is None and "DatasetError" not in str(record.msg)) or _debug_requested(debug):
            return record
        message = dataset_error_message(exc) if exc is not None else None
        try:
            text = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: left for logging to report as usual
            return record
        if message is None:
            found = _ERROR_LINE.findall(text)
            message = found[-1].strip() if found else None
        if message is not None:
            first = (text.splitlines() or [""])[0]
            record.msg, record.args = f"{first} [DatasetError: {' '.join(message.split())}]", None
            record.exc_info, record.exc_text = None, None
        return record

    factory._mtl_error_hook = True  # type: ignore[attr-defined]
    return factory


def install_error_hook(debug: bool | None = None) -> None:
    """Make an uncaught error end the run cleanly: a :class:`DatasetError` as the last line, exit code 1.

    Installs a ``sys.excepthook`` (the first ``initialize`` entry of every bundle config:
    ``"$common.errors.install_error_hook()"``). When the uncaught error holds a DatasetError (MONAI wraps it in
    ``RuntimeError: Failed to evaluate/instantiate ...``), the run prints one line saying how to see the
    traceback, then ``DatasetError: <message>`` as its last line; with ``debug`` (default: the environment
    variable ``MTL_DEBUG`` set to anything but ``""``/``"0"``) the full traceback comes first. Any other error
    keeps Python's usual traceback. Either way logging is flushed and the process exits with code 1 through
    ``os._exit``: a normal interpreter shutdown with threads still alive (e.g. after ``CacheDataset`` failed while
    loading) may abort with ``terminate called without an active exception`` and exit code 134. Ctrl-C keeps
    Python's behaviour. Log records of a DatasetError (MONAI's ``StatsHandler`` logs engine exceptions with their
    traceback) are cut to one line unless debugging. Nothing is installed in an interactive session (where the
    hook must not end the process) or when the hook is already installed.

    Args:
        debug: show the full traceback of a DatasetError; None reads ``MTL_DEBUG``.
    """
    if hasattr(sys, "ps1") or sys.flags.interactive or getattr(sys.excepthook, "_mtl_error_hook", False):
        return
    previous: Callable = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            previous(exc_type, exc, tb)
            return
        try:
            message = user_error_line(exc)
            show = _debug_requested(debug)
            if message is None or show:
                previous(exc_type, exc, tb)
            if message is not None:
                if not show:
                    print(
                        f"The run stopped on a problem with the data or the settings (set {DEBUG_ENV}=1 for the full "
                        "traceback):",
                        file=sys.stderr,
                    )
                print(" ".join(message.split()), file=sys.stderr)
            logging.shutdown()
        finally:
            for cleanup in reversed(_EXIT_CLEANUPS):
                with contextlib.suppress(Exception):
                    cleanup()
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):  # a closed or broken stream must not stop the exit
                    stream.flush()
            os._exit(1)

    hook._mtl_error_hook = True  # type: ignore[attr-defined]
    sys.excepthook = hook
    if not getattr(logging.getLogRecordFactory(), "_mtl_error_hook", False):
        logging.setLogRecordFactory(_quiet_records(logging.getLogRecordFactory(), debug))
