"""Sends an inference run's DICOM results (SEG, SR) to a PACS through the durable outbox when the run completes.

The files to send are handed over in memory by :class:`~common.handlers.dicom_results.DicomResultWriter`
(``engine.state.dicom_results``: case -> paths), so only what this run wrote is sent.
"""

from __future__ import annotations

import glob
import logging
import os
from collections import defaultdict

from ignite.engine import Engine, Events

from ..pacs.destination import Destination
from ..pacs.outbox import Outbox

__all__ = ["PacsExportHandler"]

logger = logging.getLogger(__name__)


class PacsExportHandler:
    """On ``Events.COMPLETED``: queue the DICOM files the run wrote (``engine.state.dicom_results``, one item per
    case), then flush the outbox. Called without an engine, it sends a finished output folder instead: every
    ``pattern`` file under ``output_dir`` (one item per case folder ``<output_dir>/<case>/``).

    Send failures are logged, never raised: the results are safe in the outbox and ``python -m common.pacs flush
    --outbox DIR`` retries them later. Files already queued or sent (same SOP Instance UID) are not queued again, so
    a re-run does not send twice. Credentials come from the environment or ``credentials_file``, never the config.

    Args:
        output_dir: the run's output folder (holds the default outbox; scanned when called without an engine).
        dest: destination JSON file or dict (no secrets); empty/None disables the handler (the bundle option
            ``pacs_dest`` left empty).
        outbox_dir: outbox folder; default ``$MTL_PACS_OUTBOX`` or ``<output_dir>/pacs_outbox``.
        credentials_file: a credentials file (JSON or netrc, mode 600) outside the bundle.
        protocol: ``"stow"`` or ``"cstore"``; default the destination's.
        pattern: file name pattern of the results to send.
        max_attempts, backoff_base, backoff_cap: see :class:`common.pacs.outbox.Outbox`.
    """

    def __init__(
        self,
        output_dir: str,
        dest: str | dict | None,
        outbox_dir: str | None = None,
        credentials_file: str | None = None,
        protocol: str | None = None,
        pattern: str = "*.dcm",
        max_attempts: int = 10,
        backoff_base: float = 30.0,
        backoff_cap: float = 3600.0,
    ) -> None:
        self.output_dir = str(output_dir)
        self.enabled = bool(dest)
        self.dest = None
        if self.enabled:
            self.dest = Destination.from_file(dest) if isinstance(dest, str) else Destination.from_dict(dict(dest))
            if protocol is not None:
                self.dest.check_protocol(protocol)
        self.outbox_dir = outbox_dir or os.environ.get("MTL_PACS_OUTBOX") or os.path.join(self.output_dir,
                                                                                           "pacs_outbox")
        self.credentials_file = credentials_file or None
        self.protocol = protocol or None
        self.pattern = pattern
        self.outbox_kwargs = {"max_attempts": max_attempts, "backoff_base": backoff_base, "backoff_cap": backoff_cap}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def result_sets(self) -> dict[str, list[str]]:
        """``case -> files`` found under ``output_dir`` (the outbox folder excluded)."""
        outbox = os.path.abspath(self.outbox_dir) + os.sep
        groups: dict[str, list[str]] = defaultdict(list)
        for path in sorted(glob.glob(os.path.join(self.output_dir, "**", self.pattern), recursive=True)):
            if not os.path.isfile(path) or os.path.abspath(path).startswith(outbox):
                continue
            rel = os.path.relpath(path, self.output_dir).split(os.sep)
            case = rel[0] if len(rel) > 1 else os.path.splitext(rel[0])[0]
            groups[case].append(path)
        return dict(groups)

    def __call__(self, engine: Engine | None = None) -> None:
        if not self.enabled:
            return
        if engine is None:
            groups = self.result_sets()
        else:
            groups = dict(getattr(engine.state, "dicom_results", None) or {})
            if not groups:
                logger.warning(
                    "PACS export: this run handed over no DICOM results (DICOM input and --dicom_output True are "
                    "needed, with the DICOM writer attached before the export); nothing sent."
                )
                return
        outbox = Outbox(self.outbox_dir, dest=self.dest, credentials_file=self.credentials_file,
                        protocol=self.protocol, **self.outbox_kwargs)
        queued = 0
        for case, files in groups.items():
            try:
                queued += outbox.enqueue(files, label=case) is not None
            except (ValueError, OSError) as e:
                logger.error("PACS export: case '%s' not queued: %s", case, e)
        report = outbox.flush()
        msg = (f"PACS export to '{self.dest.name}': queued {queued} case(s); sent {len(report.sent)}, failed "
               f"{len(report.failed)}; {report.pending} item(s) wait in {outbox.root}")
        if report.ok:
            logger.info(msg)
        else:
            logger.warning(f"{msg} (retry: python -m common.pacs flush --outbox {outbox.root})")
