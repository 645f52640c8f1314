"""A real Orthanc PACS for tests, started in its own network namespace (loopback only), with authentication on.

Orthanc 1.10 has no bind-address option and listens on every interface, so it runs inside a fresh network namespace
that holds only ``lo`` (see ../shared/notes/STACK.md). Clients reach it in one of two ways:

- a subprocess prefixed with :meth:`OrthancServer.netns_cmd` (``ip netns exec <ns> ...``), e.g. the export CLI;
- in-process, inside ``with server.inside():``, which moves the calling thread into the namespace (``setns``) and
  back on exit. Sockets (and threads, e.g. pynetdicom's) created inside stay in the namespace; the test process
  itself never stays there.

Usage::

    with OrthancServer() as pacs:          # skips the test (pytest.skip) where Orthanc/ip/netns are missing
        with pacs.inside():
            requests.get(pacs.url + "/system", auth=pacs.auth)
        pacs.stop(); pacs.start()          # same storage: the PACS-down scenario

Teardown stops Orthanc by PID (SIGTERM, then SIGKILL after a timeout) and deletes the namespace, also when a test
fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator

import pytest

__all__ = ["OrthancServer", "ORTHANC_BIN", "DICOMWEB_PLUGIN"]

ORTHANC_BIN = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    """Move the calling thread into the network namespace open at ``fd`` (``setns(2)``; os.setns needs 3.12)."""
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns failed: {os.strerror(err)}")


class OrthancServer:
    """One Orthanc in a private network namespace; HTTP and DICOM ports on its loopback.

    Args:
        aet: Orthanc's AE title (``DicomAet``); ``DicomCheckCalledAet`` is on, so callers must use it.
        http_port: REST/DICOMweb port inside the namespace.
        dicom_port: DIMSE port inside the namespace.
        start_timeout: seconds to wait for ``/system`` to answer 200 with the credentials.
    """

    def __init__(self, aet: str = "MTLPACS", http_port: int = 8042, dicom_port: int = 4242, start_timeout: float = 30):
        if not aet or len(aet) > 16:
            raise ValueError(f"aet must be 1-16 characters, got {aet!r}")
        self.aet = aet
        self.http_port = http_port
        self.dicom_port = dicom_port
        self.start_timeout = start_timeout
        self.host = "127.0.0.1"
        self.username = "mtl_" + secrets.token_hex(4)
        self.password = secrets.token_urlsafe(18)
        self.netns = f"mtlpacs{os.getpid()}_{secrets.token_hex(3)}"
        self.workdir: str | None = None
        self.proc: subprocess.Popen | None = None
        self._ns_created = False

    # -- addresses -------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL of Orthanc's REST API (inside the namespace)."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """Base URL of the DICOMweb plugin (QIDO/WADO/STOW prefix-free root)."""
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return self.username, self.password

    def destination(self, **overrides) -> dict:
        """A destination dict (no secrets) for ``common.pacs`` pointing at this server."""
        dest = {
            "name": "test-orthanc",
            "dicomweb_url": self.dicomweb_url,
            "ae_title": self.aet,
            "host": self.host,
            "port": self.dicom_port,
            "calling_ae_title": "MTL_TEST",
            "timeout": 10,
        }
        dest.update(overrides)
        return dest

    def netns_cmd(self, *cmd: str) -> list[str]:
        """``cmd`` prefixed so that it runs inside the server's namespace."""
        return ["ip", "netns", "exec", self.netns, *cmd]

    # -- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> OrthancServer:
        self._check_tools()
        self.workdir = tempfile.mkdtemp(prefix="mtl_orthanc_")
        try:
            self._create_netns()
            self._write_config()
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_tools(self) -> None:
        if not os.path.exists(ORTHANC_BIN):
            pytest.skip(f"Orthanc not installed ({ORTHANC_BIN}); run scripts/install_system.sh")
        if not os.path.exists(DICOMWEB_PLUGIN):
            pytest.skip(f"Orthanc DICOMweb plugin not installed ({DICOMWEB_PLUGIN}); apt-get install orthanc-dicomweb")
        if shutil.which("ip") is None:
            pytest.skip("the 'ip' command (iproute2) is missing: cannot make a network namespace for Orthanc")
        if os.geteuid() != 0:
            pytest.skip("creating a network namespace for Orthanc needs root")

    def _create_netns(self) -> None:
        res = subprocess.run(["ip", "netns", "add", self.netns], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot create network namespace {self.netns}: {res.stderr.strip()}")
        self._ns_created = True
        subprocess.run(self.netns_cmd("ip", "link", "set", "lo", "up"), check=True, capture_output=True)

    def _write_config(self) -> None:
        assert self.workdir is not None
        cfg = {
            "Name": "mtl-test-pacs",
            "StorageDirectory": os.path.join(self.workdir, "storage"),
            "IndexDirectory": os.path.join(self.workdir, "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "DicomCheckCalledAet": True,
            "DicomServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StorageCompression": False,
        }
        self.config_path = os.path.join(self.workdir, "orthanc.json")
        with open(self.config_path, "w") as f:
            json.dump(cfg, f, indent=2)
        os.chmod(self.config_path, 0o600)

    def start(self) -> None:
        """Start Orthanc (same config and storage as before) and wait until ``/system`` answers."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("Orthanc is already running")
        assert self.workdir is not None
        log = open(os.path.join(self.workdir, "orthanc.log"), "ab")
        try:
            # ``ip netns exec`` execs Orthanc in place: the PID is Orthanc's own
            self.proc = subprocess.Popen(
                self.netns_cmd(ORTHANC_BIN, self.config_path), stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = "no answer"
        with self.inside():
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    code = self.proc.returncode
                    raise RuntimeError(f"Orthanc exited with {code} during start-up:\n{self.log_tail()}")
                try:
                    anon = self._get_status("/system", auth=False)
                    if anon != 401:
                        raise RuntimeError(f"Orthanc answered {anon} to /system without credentials; expected 401")
                    if self._get_status("/system", auth=True) == 200:
                        return
                except (urllib.error.URLError, ConnectionError, OSError) as e:
                    last = str(e)
                time.sleep(0.2)
        raise RuntimeError(f"Orthanc did not answer on {self.url}/system within {self.start_timeout}s ({last})")

    def _get_status(self, path: str, auth: bool) -> int:
        req = urllib.request.Request(self.url + path)
        if auth:
            token = b64encode(f"{self.username}:{self.password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def stop(self, timeout: float = 10) -> None:
        """Stop Orthanc by PID: SIGTERM, then SIGKILL after ``timeout`` seconds. Storage is kept."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop Orthanc, delete the namespace and the storage folder."""
        try:
            self.stop()
        finally:
            if self._ns_created:
                subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
                self._ns_created = False
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None

    def log_tail(self, n: int = 40) -> str:
        if self.workdir is None:
            return ""
        path = os.path.join(self.workdir, "orthanc.log")
        if not os.path.exists(path):
            return ""
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    # -- in-process clients ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """Run the block with the calling thread in the server's namespace; always switch back."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)

    def rest(self, method: str, path: str, body: dict | None = None) -> object:
        """Call Orthanc's REST API (from inside the namespace) and return the decoded JSON answer."""
        req = urllib.request.Request(self.url + path, method=method)
        token = b64encode(f"{self.username}:{self.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            req.add_header("Content-Type", "application/json")
        with self.inside(), urllib.request.urlopen(req, data=data, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def instance_uids(self) -> list[str]:
        """SOP Instance UIDs of every instance stored (one entry per stored instance, duplicates would show)."""
        found = self.rest("POST", "/tools/find", {"Level": "Instance", "Query": {}, "Expand": True})
        return [i["MainDicomTags"]["SOPInstanceUID"] for i in found]  # type: ignore[union-attr]
