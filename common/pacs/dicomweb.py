"""DICOMweb transport: STOW-RS to store, QIDO-RS to check what the PACS already holds (dicomweb-client)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pydicom
from monai.utils import optional_import

from .credentials import Credentials
from .destination import Destination, PacsError

_HINT = "{} failed: PACS export by DICOMweb needs `pip install dicomweb-client`"
requests, _ = optional_import("requests", descriptor=_HINT)
DICOMwebClient, _ = optional_import("dicomweb_client.api", name="DICOMwebClient", descriptor=_HINT)

__all__ = ["StoreOutcome", "dicomweb_client", "stow_instances", "present_instances"]

logger = logging.getLogger(__name__)


class StoreOutcome:
    """What a PACS confirmed: ``confirmed`` SOP Instance UIDs, ``failed`` ones with the reason, and which of the
    failed ones are ``ambiguous`` (sent, but no answer: the PACS may hold them)."""

    def __init__(self, confirmed: Sequence[str] = (), failed: dict[str, str] | None = None,
                 ambiguous: Sequence[str] = ()):
        self.confirmed = list(confirmed)
        self.failed = dict(failed or {})
        self.ambiguous = set(ambiguous)

    def __repr__(self) -> str:
        return f"StoreOutcome(confirmed={len(self.confirmed)}, failed={len(self.failed)})"


def dicomweb_client(dest: Destination, credentials: Credentials | None) -> DICOMwebClient:
    """A DICOMweb client on a ``requests`` session carrying basic auth (never in the URL), without retries."""
    dest.check_protocol("stow")
    session = requests.Session()
    if credentials is not None:
        session.auth = (credentials.username, credentials.password)
    client = DICOMwebClient(url=dest.dicomweb_url, session=session, timeout=dest.timeout)
    # no hidden retries (by default 5, with waits up to 16 s, also after a connection error): the outbox retries,
    # with its own backoff and a record of what the PACS confirmed
    client.set_http_retry_params(retry=False)
    return client


def _http_error(dest: Destination, action: str, e: requests.RequestException) -> PacsError:
    """Translate a requests error into a PacsError naming the PACS; no header or credential is quoted."""
    where = dest.describe("stow")
    if isinstance(e, requests.HTTPError) and e.response is not None:
        code = e.response.status_code
        if code == 401:
            return PacsError(f"{where}: {action}: authentication failed (HTTP 401): check $MTL_PACS_USER/"
                             "$MTL_PACS_PASSWORD or the credentials file")
        if code == 403:
            return PacsError(f"{where}: {action}: access forbidden (HTTP 403) for this user")
        reason = e.response.reason or ""
        return PacsError(f"{where}: {action}: HTTP {code} {reason}".rstrip(), ambiguous=code >= 500)
    if isinstance(e, requests.ConnectTimeout):
        return PacsError(f"{where}: {action}: unreachable (connection timed out after {dest.timeout}s)")
    if isinstance(e, requests.ConnectionError) and not isinstance(e, requests.ReadTimeout):
        # refused / no route / DNS: nothing reached the PACS. A reset after sending is also a ConnectionError,
        # so treat it as ambiguous too: the outbox then checks by QIDO-RS before resending.
        refused = "refused" in str(e).lower() or "name or service" in str(e).lower()
        return PacsError(f"{where}: {action}: unreachable ({type(e).__name__}: "
                         f"{'connection refused' if refused else 'connection failed'})", ambiguous=not refused)
    return PacsError(f"{where}: {action}: {type(e).__name__} (no answer within {dest.timeout}s)", ambiguous=True)


def _parse_stow_response(payload: pydicom.Dataset) -> StoreOutcome:
    confirmed = [str(i.ReferencedSOPInstanceUID) for i in getattr(payload, "ReferencedSOPSequence", [])]
    failed = {}
    for item in getattr(payload, "FailedSOPSequence", []):
        failed[str(item.ReferencedSOPInstanceUID)] = f"failure reason 0x{int(getattr(item, 'FailureReason', 0)):04X}"
    return StoreOutcome(confirmed, failed)


def stow_instances(
    dest: Destination, datasets: Sequence[pydicom.Dataset], credentials: Credentials | None
) -> StoreOutcome:
    """Store ``datasets`` by one STOW-RS request; return what the PACS confirmed (ReferencedSOPSequence).

    Raises:
        PacsError: the request failed as a whole (authentication, unreachable, HTTP error without a STOW answer).
    """
    if not datasets:
        return StoreOutcome()
    client = dicomweb_client(dest, credentials)
    try:
        payload = client.store_instances(list(datasets))
    except requests.HTTPError as e:
        # 409 / 202: some instances failed; the body still says which were stored
        resp = e.response
        if resp is not None and resp.status_code in (202, 409) and "json" in resp.headers.get("Content-Type", ""):
            return _parse_stow_response(pydicom.Dataset.from_json(resp.content))
        raise _http_error(dest, "STOW-RS", e) from None
    except requests.RequestException as e:
        raise _http_error(dest, "STOW-RS", e) from None
    return _parse_stow_response(payload)


def present_instances(dest: Destination, study_uid: str, credentials: Credentials | None) -> set[str]:
    """SOP Instance UIDs the PACS holds in study ``study_uid`` (QIDO-RS), e.g. to skip a resend."""
    client = dicomweb_client(dest, credentials)
    try:
        found = client.search_for_instances(study_instance_uid=study_uid, fields=["SOPInstanceUID"],
                                            get_remaining=True)
    except requests.RequestException as e:
        raise _http_error(dest, "QIDO-RS", e) from None
    return {str(item["00080018"]["Value"][0]) for item in found if "00080018" in item}
