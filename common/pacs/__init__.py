"""PACS export: send DICOM results by DICOMweb STOW-RS or DIMSE C-STORE through a durable outbox.

The transports' libraries (dicomweb-client, pynetdicom) are optional imports: this package imports without them,
and sending by a transport whose library is missing names the package to install."""

from __future__ import annotations

from .credentials import ENV_FILE, ENV_PASSWORD, ENV_USER, Credentials, CredentialsError, load_credentials
from .destination import PROTOCOLS, Destination, DestinationError, PacsError
from .dicomweb import StoreOutcome, dicomweb_client, present_instances, stow_instances
from .dimse import cstore_instances, presentation_contexts
from .outbox import FlushReport, Outbox, backoff_delay, collect_dicom_files

__all__ = [
    "ENV_FILE",
    "ENV_PASSWORD",
    "ENV_USER",
    "PROTOCOLS",
    "Credentials",
    "CredentialsError",
    "Destination",
    "DestinationError",
    "FlushReport",
    "Outbox",
    "PacsError",
    "StoreOutcome",
    "backoff_delay",
    "collect_dicom_files",
    "cstore_instances",
    "dicomweb_client",
    "load_credentials",
    "present_instances",
    "presentation_contexts",
    "stow_instances",
]
