"""DIMSE transport: C-STORE with pynetdicom, presentation contexts taken from the files themselves."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pydicom
from monai.utils import optional_import
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .destination import Destination, PacsError
from .dicomweb import StoreOutcome

_HINT = "{} failed: PACS export by DIMSE C-STORE needs `pip install pynetdicom`"
AE, _ = optional_import("pynetdicom", name="AE", descriptor=_HINT)
code_to_category, _ = optional_import("pynetdicom.status", name="code_to_category", descriptor=_HINT)
evt, _ = optional_import("pynetdicom", name="evt", descriptor=_HINT)
A_ASSOCIATE_RJ, _ = optional_import("pynetdicom.pdu", name="A_ASSOCIATE_RJ", descriptor=_HINT)

__all__ = ["presentation_contexts", "cstore_instances"]

logger = logging.getLogger(__name__)
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def presentation_contexts(datasets: Sequence[pydicom.Dataset]) -> dict[str, list[str]]:
    """SOP Class UID -> transfer syntaxes to propose: each file's own, plus both little-endian ones when uncompressed.

    Raises:
        ValueError: a dataset without SOPClassUID or file meta transfer syntax, or more than 128 SOP classes.
    """
    contexts: dict[str, list[str]] = {}
    for ds in datasets:
        sop_class = getattr(ds, "SOPClassUID", None)
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if sop_class is None or ts is None:
            raise ValueError(f"datasets: {getattr(ds, 'filename', '<dataset>')} has no SOPClassUID or transfer syntax")
        syntaxes = contexts.setdefault(str(sop_class), [])
        for uid in [str(ts), *(_UNCOMPRESSED if ts in _UNCOMPRESSED else ())]:
            if uid not in syntaxes:
                syntaxes.append(uid)
    if len(contexts) > 128:
        raise ValueError(f"datasets: {len(contexts)} SOP classes exceed the 128 presentation contexts of one "
                         "association")
    return contexts


def cstore_instances(dest: Destination, datasets: Sequence[pydicom.Dataset]) -> StoreOutcome:
    """Send ``datasets`` by C-STORE over one association; confirmed = status Success or Warning (stored).

    Raises:
        PacsError: association rejected, connection closed without an answer, or PACS unreachable (nothing
            confirmed).
    """
    dest.check_protocol("cstore")
    if not datasets:
        return StoreOutcome()
    where = dest.describe("cstore")
    ae = AE(ae_title=dest.calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = dest.timeout
    ae.connection_timeout = dest.timeout
    for sop_class, syntaxes in presentation_contexts(datasets).items():
        ae.add_requested_context(sop_class, syntaxes)
    # What the transport saw, from pynetdicom's notification events: its association flags alone lose a rejection
    # when the PACS closes the connection right after its A-ASSOCIATE-RJ (the reader thread can close the socket
    # before the requesting thread looks, and the rejection then reads as an abort).
    seen: dict[str, object] = {"connected": False, "rejection": None}

    def _on_open(event) -> None:
        seen["connected"] = True

    def _on_pdu(event) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            seen["rejection"] = event.pdu

    handlers = [(evt.EVT_CONN_OPEN, _on_open), (evt.EVT_PDU_RECV, _on_pdu)]
    assoc = ae.associate(dest.host, int(dest.port), ae_title=dest.ae_title, evt_handlers=handlers)
    if not assoc.is_established:
        hint = (f"check the called AE title '{dest.ae_title}' and that the PACS accepts calling AE title "
                f"'{dest.calling_ae_title}'")
        if assoc.is_rejected or seen["rejection"] is not None:
            reason = getattr(seen["rejection"], "reason_str", None)
            raise PacsError(f"{where}: association rejected{f': {reason}' if reason else ''} ({hint})")
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            classes = sorted({str(c.abstract_syntax) for c in assoc.rejected_contexts})
            raise PacsError(f"{where}: the PACS accepts none of the SOP classes/transfer syntaxes proposed ({classes})")
        if seen["connected"]:
            raise PacsError(f"{where}: the PACS closed the connection without accepting the association ({hint})")
        raise PacsError(f"{where}: unreachable (no connection: refused or timed out)")
    confirmed, failed, ambiguous = [], {}, []
    try:
        for ds in datasets:
            uid = str(ds.SOPInstanceUID)
            if not assoc.is_established:
                failed[uid] = "association lost before sending"
                continue
            try:
                status = assoc.send_c_store(ds)
            except (ValueError, RuntimeError) as e:  # e.g. no accepted context for this SOP class/transfer syntax
                failed[uid] = str(e)
                continue
            code = getattr(status, "Status", None)
            if code is None:
                failed[uid] = "no C-STORE response (timeout or aborted association)"
                ambiguous.append(uid)
            elif code_to_category(code) in ("Success", "Warning"):
                confirmed.append(uid)
            else:
                failed[uid] = f"C-STORE status 0x{code:04X}"
    finally:
        if assoc.is_established:
            assoc.release()
    if failed and not confirmed and all(r.startswith(("no C-STORE", "association lost")) for r in failed.values()):
        raise PacsError(f"{where}: connection lost during C-STORE", ambiguous=True)
    return StoreOutcome(confirmed, failed, ambiguous)
