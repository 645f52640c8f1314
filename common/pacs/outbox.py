"""A durable outbox: results are queued on disk before any send, retried with backoff, never sent twice.

Layout under the outbox root::

    pending/<item>/state.json   one result set (e.g. the SEG + SR of one case) waiting to be sent
    pending/<item>/files/*.dcm  private copies of the files, taken when queued
    sent/<item>/state.json      the record of an item the PACS confirmed (files deleted)
    tmp/                        items being queued (moved into pending/ by one rename: queueing is atomic)

``state.json`` holds, per SOP Instance UID, whether the PACS confirmed it (STOW-RS ReferencedSOPSequence or C-STORE
status Success/Warning) and how many times it was sent; per item, the attempt count, the next retry time and the
last error. Confirmed instances are never sent again; after an ambiguous failure (timeout, dropped connection, HTTP
5xx) the outbox asks the PACS by QIDO-RS which instances it already holds before resending, and otherwise relies on
the PACS storing a SOP Instance UID once. No state file or log ever holds a credential.
"""

from __future__ import annotations

import fcntl
import glob
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pydicom
from pydicom.errors import InvalidDicomError

from ..errors import case_error
from .credentials import Credentials, CredentialsError, load_credentials
from .destination import Destination, DestinationError, PacsError
from .dicomweb import StoreOutcome, present_instances, stow_instances
from .dimse import cstore_instances

__all__ = ["Outbox", "FlushReport", "backoff_delay", "collect_dicom_files"]

logger = logging.getLogger(__name__)
_STATE = "state.json"


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after the ``attempts``-th failure: ``base * 2**(attempts-1)``, at most ``cap``."""
    if attempts < 1:
        return 0.0
    return float(min(cap, base * 2 ** min(attempts - 1, 62)))


@dataclass
class FlushReport:
    """What one :meth:`Outbox.flush` did: items ``sent``, ``failed`` (id -> error), skipped as ``not_due`` or
    ``held`` (too many attempts), and how many stay ``pending``."""

    sent: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_due: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    pending: int = 0

    @property
    def ok(self) -> bool:
        """True when the outbox is empty after the flush."""
        return self.pending == 0


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


class Outbox:
    """The outbox folder ``root`` for results going to one PACS.

    Args:
        root: outbox folder (created).
        dest: the PACS; when None, each item's recorded destination is used (recorded at queue time, no secrets).
        credentials: DICOMweb credentials; when None they are loaded at send time from the environment or
            ``credentials_file`` (see :func:`common.pacs.credentials.load_credentials`).
        credentials_file: a credentials file outside the bundle.
        protocol: ``"stow"`` or ``"cstore"``; default the destination's.
        max_attempts: after this many failed attempts an item is held: kept, but retried only by ``flush(force=True)``.
        backoff_base: seconds before the first retry; doubled after each failure.
        backoff_cap: longest wait between retries, in seconds.
    """

    def __init__(
        self,
        root: str,
        dest: Destination | None = None,
        credentials: Credentials | None = None,
        credentials_file: str | None = None,
        protocol: str | None = None,
        max_attempts: int = 10,
        backoff_base: float = 30.0,
        backoff_cap: float = 3600.0,
    ):
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if backoff_base < 0 or backoff_cap < backoff_base:
            raise ValueError(f"backoff_base/backoff_cap must satisfy 0 <= base <= cap, got {backoff_base}, "
                             f"{backoff_cap}")
        if protocol is not None and dest is not None:
            dest.check_protocol(protocol)
        self.root = os.path.abspath(root)
        self.dest = dest
        self.credentials = credentials
        self.credentials_file = credentials_file
        self.protocol = protocol
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        if not os.path.isdir(self.root):
            os.makedirs(self.root, mode=0o700)  # the queued results hold patient data: private to this user
        for sub in ("pending", "sent", "tmp"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)

    # -- queueing ---------------------------------------------------------------------------------------------
    def _dir(self, kind: str, item_id: str = "") -> str:
        return os.path.join(self.root, kind, item_id)

    def _ids(self, kind: str) -> list[str]:
        base = self._dir(kind)
        return sorted(d for d in os.listdir(base) if os.path.isfile(os.path.join(base, d, _STATE)))

    def known_uids(self) -> set[str]:
        """SOP Instance UIDs already queued or sent through this outbox."""
        uids: set[str] = set()
        for kind in ("pending", "sent"):
            for item_id in self._ids(kind):
                uids.update(_read_json(os.path.join(self._dir(kind, item_id), _STATE))["instances"])
        return uids

    def enqueue(self, paths: Iterable[str], label: str | None = None, protocol: str | None = None) -> str | None:
        """Queue the DICOM files ``paths`` as one item (copied; atomic). Return its id, or None when every
        instance was already queued or sent (nothing is queued twice).

        Raises:
            DatasetError: a file that is not DICOM or has no SOP Instance UID (names the file).
            DestinationError: no destination, or it lacks what the protocol needs.
        """
        dest = self.dest
        if dest is None:
            raise DestinationError("Outbox.enqueue needs a destination (dest)")
        protocol = protocol or self.protocol or dest.protocol
        dest.check_protocol(protocol)
        known = self.known_uids()
        picked: list[tuple[str, str, str]] = []
        for path in paths:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError) as e:
                raise case_error(label, path, f"cannot be queued for the PACS: not a readable DICOM file ({e})") from e
            uid, study = getattr(ds, "SOPInstanceUID", None), getattr(ds, "StudyInstanceUID", None)
            if not uid or not study:
                raise case_error(label, path, "cannot be queued for the PACS: no SOPInstanceUID/StudyInstanceUID")
            if str(uid) in known or any(str(uid) == p[1] for p in picked):
                logger.info("outbox %s: %s (SOP Instance UID %s) already queued or sent; skipped", self.root, path, uid)
                continue
            picked.append((path, str(uid), str(study)))
        if not picked:
            return None
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label or "item")[:40]
        item_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{safe}-{secrets.token_hex(4)}"
        tmp = self._dir("tmp", item_id)
        os.makedirs(os.path.join(tmp, "files"))
        instances = {}
        for i, (path, uid, study) in enumerate(picked):
            rel = os.path.join("files", f"{i:04d}.dcm")
            shutil.copyfile(path, os.path.join(tmp, rel))
            instances[uid] = {"file": rel, "source": os.path.abspath(path), "study": study, "confirmed": False,
                              "sends": 0}
        state = {
            "id": item_id,
            "label": label,
            "created": time.time(),
            "protocol": protocol,
            "destination": dest.to_dict(),
            "instances": instances,
            "attempts": 0,
            "next_attempt": 0.0,
            "last_error": None,
            "last_ambiguous": False,
            "held": False,
        }
        _write_json(os.path.join(tmp, _STATE), state)
        os.rename(tmp, self._dir("pending", item_id))
        logger.info("outbox %s: queued %d instance(s) as %s", self.root, len(instances), item_id)
        return item_id

    # -- inspecting -------------------------------------------------------------------------------------------
    def pending(self) -> list[dict]:
        """States of the items waiting to be sent, oldest first."""
        states = [_read_json(os.path.join(self._dir("pending", i), _STATE)) for i in self._ids("pending")]
        return sorted(states, key=lambda s: (s["created"], s["id"]))

    def sent(self) -> list[dict]:
        """Records of the items the PACS confirmed."""
        return [_read_json(os.path.join(self._dir("sent", i), _STATE)) for i in self._ids("sent")]

    def send_counts(self) -> dict[str, int]:
        """SOP Instance UID -> how many times it was sent (pending and sent items)."""
        counts = {}
        for state in self.pending() + self.sent():
            for uid, inst in state["instances"].items():
                counts[uid] = inst["sends"]
        return counts

    # -- sending ----------------------------------------------------------------------------------------------
    def flush(self, now: float | None = None, force: bool = False) -> FlushReport:
        """Try every due item once (all pending items when ``force``); return what happened.

        Failures are recorded in the item (attempts, next retry, error) and logged, never raised. A lock file
        keeps two flushes (e.g. the inference handler and a cron job) from sending the same item at once.
        """
        report = FlushReport()
        with open(os.path.join(self.root, ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for state in self.pending():
                t = time.time() if now is None else now
                if state["held"] and not force:
                    report.held.append(state["id"])
                elif state["next_attempt"] > t and not force:
                    report.not_due.append(state["id"])
                else:
                    error = self._attempt(state, t)
                    if error is None:
                        report.sent.append(state["id"])
                    else:
                        report.failed[state["id"]] = error
            report.pending = len(self._ids("pending"))
        return report

    def _credentials(self, dest: Destination) -> Credentials | None:
        if self.credentials is None:
            self.credentials = load_credentials(self.credentials_file, dest.dicomweb_url)
        return self.credentials

    def _attempt(self, state: dict, now: float) -> str | None:
        item_dir = self._dir("pending", state["id"])
        state_path = os.path.join(item_dir, _STATE)
        protocol = self.protocol or state["protocol"]
        ambiguous = False
        try:
            dest = self.dest or Destination.from_dict(state["destination"], source=f"outbox item {state['id']}")
            dest.check_protocol(protocol)
            todo = {u: i for u, i in state["instances"].items() if not i["confirmed"]}
            if state["last_ambiguous"] and dest.dicomweb_url:
                # the last try may have reached the PACS: ask it what it holds before sending again
                creds = self._credentials(dest)
                for study in sorted({i["study"] for i in todo.values()}):
                    for uid in present_instances(dest, study, creds) & set(todo):
                        state["instances"][uid].update(confirmed=True, confirmed_by="qido")
                        del todo[uid]
                _write_json(state_path, state)
            if todo:
                datasets = [pydicom.dcmread(os.path.join(item_dir, i["file"])) for i in todo.values()]
                for uid in todo:
                    state["instances"][uid]["sends"] += 1
                _write_json(state_path, state)  # counted before the send: a crash mid-send still shows
                if protocol == "stow":
                    outcome = stow_instances(dest, datasets, self._credentials(dest))
                else:
                    outcome = cstore_instances(dest, datasets)
                self._record(state, outcome, protocol)
                missing = [u for u in todo if not state["instances"][u]["confirmed"]]
                if missing:
                    reasons = "; ".join(f"{u}: {outcome.failed.get(u, 'not confirmed by the PACS')}" for u in missing)
                    unsure = any(u not in outcome.failed or u in outcome.ambiguous for u in missing)
                    raise PacsError(f"{dest.describe(protocol)}: {len(missing)} of {len(todo)} instance(s) not "
                                    f"stored ({reasons})", ambiguous=unsure)
        except (PacsError, CredentialsError, DestinationError, OSError) as e:
            ambiguous = bool(getattr(e, "ambiguous", False))
            state["attempts"] += 1
            state["last_error"] = str(e)
            state["last_ambiguous"] = ambiguous or state["last_ambiguous"]
            delay = backoff_delay(state["attempts"], self.backoff_base, self.backoff_cap)
            state["next_attempt"] = now + delay
            state["held"] = state["attempts"] >= self.max_attempts
            _write_json(state_path, state)
            logger.error("outbox %s: item %s kept (attempt %d%s): %s", self.root, state["id"], state["attempts"],
                         ", held: too many attempts" if state["held"] else f", retry in {delay:.0f}s", e)
            return str(e)
        state.update(sent_at=time.time(), last_error=None, last_ambiguous=False)
        state["attempts"] += 1
        _write_json(state_path, state)
        sent_dir = self._dir("sent", state["id"])
        os.rename(item_dir, sent_dir)
        shutil.rmtree(os.path.join(sent_dir, "files"), ignore_errors=True)
        logger.info("outbox %s: item %s stored in %s (%d instance(s))", self.root, state["id"],
                    (self.dest or Destination.from_dict(state["destination"])).describe(protocol),
                    len(state["instances"]))
        return None

    @staticmethod
    def _record(state: dict, outcome: StoreOutcome, protocol: str) -> None:
        for uid in outcome.confirmed:
            if uid in state["instances"]:
                state["instances"][uid].update(confirmed=True, confirmed_by=protocol)


def collect_dicom_files(paths: Sequence[str], pattern: str = "*.dcm") -> list[tuple[str, list[str]]]:
    """Group inputs into result sets: each directory (recursively, files matching ``pattern``) is one set, each
    file its own. Returns ``[(label, files)]``; raises ValueError naming a path that does not exist."""
    groups = []
    for p in paths:
        if os.path.isdir(p):
            files = sorted(f for f in glob.glob(os.path.join(p, "**", pattern), recursive=True) if os.path.isfile(f))
            if files:
                groups.append((os.path.basename(os.path.normpath(p)), files))
        elif os.path.isfile(p):
            groups.append((os.path.splitext(os.path.basename(p))[0], [p]))
        else:
            raise ValueError(f"paths: {p} does not exist")
    return groups
