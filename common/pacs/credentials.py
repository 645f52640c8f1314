"""PACS credentials: from the environment or a private file outside the bundle, never from configs or logs."""

from __future__ import annotations

import json
import logging
import netrc
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["Credentials", "CredentialsError", "load_credentials", "ENV_USER", "ENV_PASSWORD", "ENV_FILE"]

ENV_USER = "MTL_PACS_USER"
ENV_PASSWORD = "MTL_PACS_PASSWORD"
ENV_FILE = "MTL_PACS_CREDENTIALS"

logger = logging.getLogger(__name__)


class CredentialsError(ValueError):
    """Credentials missing, unreadable or stored unsafely. The message never holds the secret itself."""


@dataclass(frozen=True)
class Credentials:
    """HTTP basic-auth user and password for a DICOMweb PACS. ``repr``/``str`` never show the password."""

    username: str
    password: str = field(repr=False)

    def __str__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***)"


def _check_private(path: str) -> None:
    """Refuse a credentials file that other users can read (like ssh does with private keys)."""
    mode = os.stat(path).st_mode
    if mode & stat.S_IROTH:
        raise CredentialsError(
            f"credentials file {path} is readable by every user (mode {stat.filemode(mode)}); "
            f"refusing to use it: run 'chmod 600 {path}'"
        )
    if mode & stat.S_IRGRP:
        logger.warning("credentials file %s is readable by its group (mode %s); prefer chmod 600", path,
                       stat.filemode(mode))


def _from_file(path: str, host: str | None) -> Credentials:
    if not os.path.isfile(path):
        raise CredentialsError(f"credentials file {path} does not exist")
    _check_private(path)
    with open(path) as f:
        text = f.read()
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            # the decoder's message quotes no content, only the position
            raise CredentialsError(f"credentials file {path} is not valid JSON (line {e.lineno})") from None
        user, password = data.get("username"), data.get("password")
        if not isinstance(user, str) or not isinstance(password, str) or not user:
            raise CredentialsError(f"credentials file {path} needs string keys 'username' and 'password'")
        return Credentials(user, password)
    try:
        rc = netrc.netrc(path)
    except netrc.NetrcParseError as e:
        raise CredentialsError(f"credentials file {path} is neither JSON nor netrc (line {e.lineno})") from None
    entry = rc.authenticators(host) if host else None
    if entry is None:
        entry = rc.authenticators("default")
    if entry is None or not entry[0] or entry[2] is None:
        raise CredentialsError(f"credentials file {path} has no 'machine {host}' (or 'default') entry with login "
                               "and password")
    return Credentials(entry[0], entry[2])


def load_credentials(
    path: str | None = None, url: str | None = None, env: Mapping[str, str] | None = None
) -> Credentials | None:
    """Find the credentials for the DICOMweb PACS at ``url``.

    Order: the file ``path`` (CLI option), the file named by ``$MTL_PACS_CREDENTIALS``, then ``$MTL_PACS_USER`` with
    ``$MTL_PACS_PASSWORD``. ``None`` when none is given (a PACS without authentication).

    A file is JSON (``{"username": ..., "password": ...}``) or netrc (``machine <host> login <u> password <p>``,
    matched on the host of ``url``, else ``default``); it must not be readable by other users.

    Raises:
        CredentialsError: a file missing, unsafe or malformed, or a user without a password.
    """
    env = os.environ if env is None else env
    host = urlsplit(url).hostname if url else None
    path = path or env.get(ENV_FILE) or None
    if path:
        return _from_file(os.path.expanduser(path), host)
    user, password = env.get(ENV_USER), env.get(ENV_PASSWORD)
    if user and password is None:
        raise CredentialsError(f"${ENV_USER} is set but ${ENV_PASSWORD} is not")
    if password is not None and not user:
        raise CredentialsError(f"${ENV_PASSWORD} is set but ${ENV_USER} is not")
    return Credentials(user, password) if user else None
