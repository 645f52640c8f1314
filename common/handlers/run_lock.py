"""One training run per checkpoint folder: a lock file naming the running process, with stale-lock detection."""

from __future__ import annotations

import atexit
import errno
import json
import logging
import os
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

from ..errors import BundleError, register_exit_cleanup

if TYPE_CHECKING:
    from typing import Self

__all__ = ["LOCK_FILE", "RunLock", "RunLockedError"]

logger = logging.getLogger(__name__)

LOCK_FILE = "training.lock"


class RunLockedError(BundleError, RuntimeError):
    """Another live training run holds the lock on the checkpoint folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as err:
        return err.errno == errno.EPERM  # exists, owned by another user
    return True


class RunLock:
    """A lock on a training run's checkpoint folder for the length of the run.

    ``acquire`` creates ``<lock_dir>/training.lock`` (exclusively) holding this process's PID, host, start time
    and command line. A second run into the same folder gets a :class:`RunLockedError` naming the folder and the
    running PID. A lock left by a process that is gone (same host, PID not running) is taken over with a warning;
    a lock from another host cannot be checked and is reported with that host. The lock is released by
    ``release`` (a config's ``finalize``), on leaving a ``with`` block, and at interpreter exit (so also when
    the run fails). Acquiring again in the process that holds the lock is allowed (nested stages of one
    run). Under ``torchrun`` only rank 0 (environment ``RANK``) takes the lock.

    Args:
        lock_dir: the folder the run writes its checkpoints to (created if missing).
        filename: lock file name inside ``lock_dir``.
    """

    def __init__(self, lock_dir: str | os.PathLike, filename: str = LOCK_FILE) -> None:
        if not str(lock_dir):
            raise ValueError("lock_dir must name a folder.")
        self.lock_dir = os.path.abspath(str(lock_dir))
        self.path = os.path.join(self.lock_dir, filename)
        self.held = False
        self._exit_hook = False

    def _info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        }

    def _read(self) -> dict[str, Any] | None:
        try:
            with open(self.path) as f:
                info = json.load(f)
            return info if isinstance(info, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or damaged

    def acquire(self) -> Self:
        """Take the lock; raise :class:`RunLockedError` if another live run holds it. Returns self."""
        if self.held or os.environ.get("RANK", "0") not in ("", "0"):
            return self
        os.makedirs(self.lock_dir, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self._read()
                if info is None:
                    continue  # released meanwhile
                if not self._stale(info):
                    if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
                        return self  # this process holds it already (an earlier stage of the same run)
                    raise RunLockedError(
                        f"the checkpoint folder {self.lock_dir} is in use by another training run (PID "
                        f"{info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}"
                        f": {info.get('command', '?')}). Wait for it to finish or stop it, or train into another "
                        f"folder (--bundle_root or --ckpt_dir); if no such run exists, delete {self.path}."
                    )
                logger.warning(
                    f"taking over the lock {self.path} of a training run that is no longer running (PID "
                    f"{info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')})."
                )
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._info(), f, indent=2)
            self.held = True
            if not self._exit_hook:
                atexit.register(self.release)
                register_exit_cleanup(self.release)  # a failed run ends by os._exit in the error hook
                self._exit_hook = True
            return self
        raise RunLockedError(f"could not take the lock {self.path}: other runs keep creating it.")

    def _stale(self, info: dict[str, Any]) -> bool:
        if not info:  # being written right now, or damaged: stale once it is a minute old
            try:
                return time.time() - os.path.getmtime(self.path) > 60
            except FileNotFoundError:
                return True
        pid, host = info.get("pid"), info.get("host")
        if host != socket.gethostname() or not isinstance(pid, int):
            return False  # another host (a shared disk): its PID cannot be checked from here
        return not _pid_alive(pid)

    def release(self) -> None:
        """Remove the lock file if this object holds it."""
        if not self.held:
            return
        self.held = False
        info = self._read()
        if info is not None and info.get("pid") == os.getpid():
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
