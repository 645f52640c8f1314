"""PACS export: send DICOM results by DICOMweb STOW-RS or DIMSE C-STORE through a durable outbox."""

from __future__ import annotations

from .credentials import Credentials, CredentialsError, load_credentials
from .destination import Destination, DestinationError, PacsError
from .dicomweb import StoreOutcome, present_instances, stow_instances
from .dimse import cstore_instances, presentation_contexts
from .outbox import FlushReport, Outbox, backoff_delay, collect_dicom_files
