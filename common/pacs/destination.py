"""Where results go: a PACS destination (DICOMweb URL and/or DIMSE AE), read from a small JSON file with no secrets."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from urllib.parse import urlsplit

__all__ = ["Destination", "DestinationError", "PacsError", "PROTOCOLS"]

PROTOCOLS = ("stow", "cstore")
_SECRET_KEYS = {"password", "passwd", "secret", "token", "username", "user", "login", "auth", "authorization"}


class DestinationError(ValueError):
    """A destination file or setting that cannot be used; the message names the file and the key."""


class PacsError(RuntimeError):
    """A send that did not (fully) succeed. The message names the PACS and the cause, never a credential.

    Args:
        message: what went wrong, starting with the PACS's name/address.
        ambiguous: True when the PACS may have stored data before the failure (timeout or dropped connection after
            the request left, HTTP 5xx): before resending, the outbox checks what the PACS already holds.
    """

    def __init__(self, message: str, ambiguous: bool = False):
        super().__init__(message)
        self.ambiguous = ambiguous


@dataclass(frozen=True)
class Destination:
    """A PACS to send results to.

    Args:
        name: a label for logs and the outbox.
        dicomweb_url: DICOMweb root for STOW-RS/QIDO-RS, e.g. ``http://pacs:8042/dicom-web``.
        ae_title: the PACS's (called) AE title for C-STORE.
        host: the PACS's DIMSE host.
        port: the PACS's DIMSE port.
        calling_ae_title: our AE title.
        protocol: default protocol, ``"stow"`` or ``"cstore"``.
        timeout: network timeout in seconds (connect, each request/response).
    """

    name: str = "pacs"
    dicomweb_url: str | None = None
    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    calling_ae_title: str = "MTL_EXPORT"
    protocol: str = "stow"
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise DestinationError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.dicomweb_url is not None:
            parts = urlsplit(self.dicomweb_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise DestinationError(f"dicomweb_url must be an http(s) URL, got {self.dicomweb_url!r}")
            if parts.username or parts.password:
                raise DestinationError("dicomweb_url must not hold a user or password: give credentials by "
                                       "environment or credentials file")
        for key in ("ae_title", "calling_ae_title"):
            value = getattr(self, key)
            if value is not None and not (0 < len(value) <= 16):
                raise DestinationError(f"{key} must be 1-16 characters, got {value!r}")
        if self.port is not None and not (0 < int(self.port) < 65536):
            raise DestinationError(f"port must be in 1..65535, got {self.port!r}")
        if self.timeout <= 0:
            raise DestinationError(f"timeout must be positive, got {self.timeout!r}")

    def check_protocol(self, protocol: str) -> None:
        """Raise DestinationError when this destination lacks the settings ``protocol`` needs."""
        if protocol not in PROTOCOLS:
            raise DestinationError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if protocol == "stow" and not self.dicomweb_url:
            raise DestinationError(f"destination '{self.name}' has no dicomweb_url: cannot send by STOW-RS")
        if protocol == "cstore" and not (self.ae_title and self.host and self.port):
            raise DestinationError(f"destination '{self.name}' needs ae_title, host and port for C-STORE")

    def describe(self, protocol: str) -> str:
        """The PACS address for messages: the DICOMweb URL, or ``AET@host:port``."""
        if protocol == "stow":
            return f"PACS {self.dicomweb_url}"
        return f"PACS {self.ae_title}@{self.host}:{self.port}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "destination") -> Destination:
        """Build from a dict; refuse unknown keys and anything that looks like a secret."""
        if not isinstance(data, dict):
            raise DestinationError(f"{source}: expected a JSON object, got {type(data).__name__}")
        secret = sorted(k for k in data if k.lower() in _SECRET_KEYS)
        if secret:
            raise DestinationError(f"{source} holds {secret}: credentials never go in a destination file; use "
                                   "$MTL_PACS_USER/$MTL_PACS_PASSWORD or a credentials file (--credentials)")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DestinationError(f"{source}: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str) -> Destination:
        """Read a destination JSON file."""
        if not os.path.isfile(path):
            raise DestinationError(f"destination file {path} does not exist")
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise DestinationError(f"destination file {path} is not valid JSON: {e}") from None
        return cls.from_dict(data, source=f"destination file {path}")
