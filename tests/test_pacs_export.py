"""PACS export against a real Orthanc (Debian package) in a loopback-only network namespace, authentication on.

Covers STOW-RS + QIDO-RS and C-STORE round trips, the CLI, a wrong password, PACS down then up (nothing lost, nothing
sent twice), backoff, an ambiguous failure resolved by QIDO-RS, and the ignite handler.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from orthanc_server import OrthancServer  # noqa: E402

from common.pacs import (  # noqa: E402
    Credentials,
    CredentialsError,
    Destination,
    DestinationError,
    Outbox,
    PacsError,
    backoff_delay,
    cstore_instances,
    load_credentials,
    present_instances,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pacs():
    with OrthancServer() as server:
        yield server


def make_case(folder: Path, with_seg: bool = False) -> dict[str, str]:
    """Write CT_small + MR_small (fresh study/series/instance UIDs; optionally a highdicom SEG of the CT) into
    ``folder``; return SOPInstanceUID -> path. All share one StudyInstanceUID."""
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    out = {}
    ct = None
    for name in ("CT_small.dcm", "MR_small.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / name
        ds.save_as(path)
        out[ds.SOPInstanceUID] = str(path)
        ct = ds if name.startswith("CT") else ct
    if with_seg:
        import highdicom as hd
        from pydicom.sr.codedict import codes

        mask = np.zeros((1, ct.Rows, ct.Columns), dtype=bool)
        mask[0, 40:80, 40:80] = True
        desc = hd.seg.SegmentDescription(
            segment_number=1, segment_label="lesion",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="pacs-test", version="0", family=codes.DCM.ArtificialIntelligence),
        )
        seg = hd.seg.Segmentation(
            source_images=[ct], pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[desc], series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="mtl", manufacturer_model_name="pacs-test", software_versions="0",
            device_serial_number="1",
        )
        path = folder / "seg.dcm"
        seg.save_as(path)
        out[seg.SOPInstanceUID] = str(path)
    return out


def study_of(paths) -> str:
    return str(pydicom.dcmread(next(iter(paths)), stop_before_pixels=True).StudyInstanceUID)


def stored_in_study(pacs: OrthancServer, study: str) -> list[str]:
    """SOP Instance UIDs Orthanc holds for ``study``, by its REST API (one entry per stored instance)."""
    found = pacs.rest("POST", "/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study},
                                              "Expand": True})
    return sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in found)


def run_cli(pacs: OrthancServer, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m common.pacs ARGS`` inside the PACS's network namespace, with this worktree's ``common``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MTL_PACS_")}
    full_env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env or {}))
    cmd = pacs.netns_cmd(sys.executable, "-m", "common.pacs", *args)
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=120, cwd=str(REPO))


def files_text(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_stow_round_trip_qido(pacs, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    case = make_case(tmp_path / "case1", with_seg=True)
    dest = Destination.from_dict(pacs.destination(protocol="stow"))
    outbox = Outbox(str(tmp_path / "outbox"), dest=dest, credentials=Credentials(*pacs.auth))
    item = outbox.enqueue(case.values(), label="case1")
    assert item is not None and len(outbox.pending()) == 1
    with pacs.inside():
        report = outbox.flush()
        back = present_instances(dest, study_of(case.values()), Credentials(*pacs.auth))
    assert report.ok and report.sent == [item], report
    assert back == set(case)  # QIDO-RS by StudyInstanceUID returns exactly CT, MR and SEG
    assert stored_in_study(pacs, study_of(case.values())) == sorted(case)
    assert outbox.send_counts() == {uid: 1 for uid in case}
    assert outbox.pending() == [] and not (tmp_path / "outbox" / "sent" / item / "files").exists()
    assert (tmp_path / "outbox").stat().st_mode & 0o077 == 0  # queued patient data is private to this user
    assert outbox.enqueue(case.values(), label="case1") is None  # already sent: not queued again
    assert pacs.password not in caplog.text


def test_cstore_round_trip_cli(pacs, tmp_path):
    case = make_case(tmp_path / "case2")
    dest_file = tmp_path / "dest.json"
    dest_file.write_text(json.dumps(pacs.destination(protocol="cstore")))
    outbox = tmp_path / "outbox"
    res = run_cli(pacs, ["send", "--dest", str(dest_file), "--outbox", str(outbox), str(tmp_path / "case2")])
    assert res.returncode == 0, res.stdout + res.stderr
    assert stored_in_study(pacs, study_of(case.values())) == sorted(case)
    res = run_cli(pacs, ["status", "--outbox", str(outbox)])
    assert res.returncode == 0 and "0 pending" in res.stdout, res.stdout

    # a wrong called AE title: the association is rejected, the result stays queued
    bad = tmp_path / "bad_aet.json"
    bad.write_text(json.dumps(pacs.destination(protocol="cstore", ae_title="NOT_THE_PACS")))
    case3 = make_case(tmp_path / "case3")
    res = run_cli(pacs, ["send", "--dest", str(bad), "--outbox", str(outbox), str(tmp_path / "case3")])
    assert res.returncode == 1
    assert f"NOT_THE_PACS@{pacs.host}:{pacs.dicom_port}: association rejected" in res.stderr, res.stderr
    assert stored_in_study(pacs, study_of(case3.values())) == []
    assert len(Outbox(str(outbox)).pending()) == 1


class _OneShotAcceptor:
    """A TCP listener on 127.0.0.1 that reads each association request, answers ``reply`` (raw PDU bytes, or
    nothing) and closes at once: what a PACS refusing the called AE title does on the wire, with the close racing
    the reply."""

    def __init__(self, reply: bytes):
        self.reply, self.sock = reply, socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                header = conn.recv(6)
                length = int.from_bytes(header[2:6], "big") if len(header) == 6 else 0
                while length > 0:
                    chunk = conn.recv(min(length, 65536))
                    if not chunk:
                        break
                    length -= len(chunk)
                if self.reply:
                    conn.sendall(self.reply)

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self.thread.join(timeout=5)


def test_cstore_failure_diagnosis_without_pacs(tmp_path):
    """Rejected (even when the PACS closes the connection straight after its A-ASSOCIATE-RJ), closed without an
    answer, and nothing listening each get their own message naming the destination."""
    from pynetdicom.pdu import A_ASSOCIATE_RJ

    rj = A_ASSOCIATE_RJ()
    rj.result, rj.source, rj.reason_diagnostic = 1, 1, 7  # permanent, service user, called AE title not recognised
    datasets = [pydicom.dcmread(p) for p in make_case(tmp_path / "case").values()]
    for reply, expected in ((rj.encode(), "association rejected: Called AE title not recognised"),
                            (b"", "the PACS closed the connection without accepting the association")):
        server = _OneShotAcceptor(reply)
        try:
            dest = Destination(protocol="cstore", host="127.0.0.1", port=server.port, ae_title="WRONG", timeout=5)
            for _ in range(10):  # the close races the reply: every try must read as the same failure
                with pytest.raises(PacsError, match=f"WRONG@127.0.0.1:{server.port}: {expected}"):
                    cstore_instances(dest, datasets)
        finally:
            server.close()
    with socket.socket() as bound:  # bound, not listening: connection refused
        bound.bind(("127.0.0.1", 0))
        dest = Destination(protocol="cstore", host="127.0.0.1", port=bound.getsockname()[1], ae_title="WRONG",
                           timeout=5)
        with pytest.raises(PacsError, match=r"unreachable \(no connection: refused or timed out\)"):
            cstore_instances(dest, datasets)


def test_wrong_password_kept_and_not_logged(pacs, tmp_path):
    make_case(tmp_path / "case4")
    dest_file = tmp_path / "dest.json"
    dest_file.write_text(json.dumps(pacs.destination(protocol="stow")))
    outbox = tmp_path / "outbox"
    wrong = "Wr0ng-" + pacs.password[::-1]
    res = run_cli(pacs, ["send", "--dest", str(dest_file), "--outbox", str(outbox), str(tmp_path / "case4")],
                  env={"MTL_PACS_USER": pacs.username, "MTL_PACS_PASSWORD": wrong})
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert f"PACS {pacs.dicomweb_url}" in res.stderr and "authentication failed (HTTP 401)" in res.stderr, out
    assert wrong not in out and wrong.encode() not in files_text(outbox)
    pending = Outbox(str(outbox)).pending()
    assert len(pending) == 1 and pending[0]["attempts"] == 1 and len(pending[0]["instances"]) == 2

    # a world-readable credentials file is refused; a private one (mode 600) works
    cred = tmp_path / "pacs_credentials.json"
    cred.write_text(json.dumps({"username": pacs.username, "password": pacs.password}))
    cred.chmod(0o644)
    res = run_cli(pacs, ["flush", "--outbox", str(outbox), "--credentials", str(cred), "--force"])
    assert res.returncode == 1 and "readable by every user" in res.stderr, res.stderr
    cred.chmod(0o600)
    res = run_cli(pacs, ["flush", "--outbox", str(outbox), "--credentials", str(cred), "--force"])
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert pacs.password not in out and pacs.password.encode() not in files_text(outbox)
    assert len(stored_in_study(pacs, pending[0]["instances"][next(iter(pending[0]["instances"]))]["study"])) == 2


def test_pacs_down_then_up(pacs, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    dest = Destination.from_dict(pacs.destination(protocol="stow", timeout=3))
    outbox = Outbox(str(tmp_path / "outbox"), dest=dest, credentials=Credentials(*pacs.auth), backoff_base=60,
                    backoff_cap=600, max_attempts=5)
    case_a = make_case(tmp_path / "a")
    case_b = make_case(tmp_path / "b")
    item_a = outbox.enqueue(case_a.values(), label="a")
    with pacs.inside():
        assert outbox.flush().sent == [item_a]
    pacs.stop()
    try:
        item_b = outbox.enqueue(case_b.values(), label="b")
        t0 = time.time()
        with pacs.inside():
            report = outbox.flush(now=t0)
        assert report.failed.keys() == {item_b} and "unreachable" in report.failed[item_b], report
        assert f"PACS {pacs.dicomweb_url}" in report.failed[item_b]
        state = outbox.pending()[0]
        assert state["attempts"] == 1 and state["next_attempt"] == pytest.approx(t0 + 60)
        assert not state["last_ambiguous"]  # connection refused: nothing can have reached the PACS
    finally:
        pacs.start()
    # PACS is back, but the retry is not due yet: backoff is respected
    with pacs.inside():
        report = outbox.flush(now=t0 + 30)
    assert report.not_due == [item_b] and not report.sent
    assert stored_in_study(pacs, study_of(case_b.values())) == []
    with pacs.inside():
        report = outbox.flush(now=t0 + 61)
        assert report.sent == [item_b] and report.ok
        assert outbox.flush().sent == []  # a second flush sends nothing
    counts = outbox.send_counts()
    assert {u: counts[u] for u in case_a} == {u: 1 for u in case_a}  # confirmed before the outage: never resent
    assert {u: counts[u] for u in case_b} == {u: 2 for u in case_b}  # refused once, then stored
    stored = pacs.instance_uids()
    for uid in [*case_a, *case_b]:
        assert stored.count(uid) == 1
    assert pacs.password not in caplog.text


def test_ambiguous_timeout_checked_by_qido(pacs, tmp_path):
    """Orthanc frozen (SIGSTOP): the STOW request is sent but no answer comes (timeout, ambiguous). Once Orthanc
    runs again and has stored the request, the next flush asks QIDO-RS and does not send again."""
    dest = Destination.from_dict(pacs.destination(protocol="stow", timeout=2))
    outbox = Outbox(str(tmp_path / "outbox"), dest=dest, credentials=Credentials(*pacs.auth), backoff_base=0,
                    backoff_cap=0)
    case = make_case(tmp_path / "c")
    item = outbox.enqueue(case.values(), label="c")
    os.kill(pacs.proc.pid, signal.SIGSTOP)
    try:
        with pacs.inside():
            report = outbox.flush()
    finally:
        os.kill(pacs.proc.pid, signal.SIGCONT)
    assert item in report.failed and outbox.pending()[0]["last_ambiguous"], report
    study = study_of(case.values())
    deadline = time.time() + 10
    while time.time() < deadline and len(stored_in_study(pacs, study)) < len(case):
        time.sleep(0.3)
    stored_meanwhile = stored_in_study(pacs, study) == sorted(case)
    with pacs.inside():
        assert outbox.flush().sent == [item]
    record = outbox.sent()[0]
    assert stored_in_study(pacs, study) == sorted(case)
    if stored_meanwhile:  # the PACS holds them: found by QIDO-RS, not sent again
        assert {i["confirmed_by"] for i in record["instances"].values()} == {"qido"}
        assert set(outbox.send_counts().values()) == {1}
    else:  # Orthanc dropped the timed-out request: sent again, stored once
        assert set(outbox.send_counts().values()) == {2}


def test_partial_cstore_failure_resends_only_unconfirmed(pacs, tmp_path):
    """One instance of an unknown SOP class (Orthanc rejects its presentation context), one good CT: the CT is
    confirmed once and never resent; only the rejected one is tried again."""
    case = make_case(tmp_path / "e")
    odd_path = next(p for p in case.values() if p.endswith("MR_small.dcm"))
    odd = pydicom.dcmread(odd_path)
    odd.SOPClassUID = odd.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.8.498.1.999"
    odd.save_as(odd_path)
    dest = Destination.from_dict(pacs.destination(protocol="cstore"))
    outbox = Outbox(str(tmp_path / "outbox"), dest=dest, backoff_base=0, backoff_cap=0)
    item = outbox.enqueue(case.values(), label="e")
    with pacs.inside():
        r1, r2 = outbox.flush(), outbox.flush()
    assert "1 of 2 instance(s) not stored" in r1.failed[item] and "No presentation context" in r1.failed[item]
    assert "accepts none of the SOP classes" in r2.failed[item] and "1.2.826.0.1.3680043.8.498.1.999" in r2.failed[item]
    ct_uid = next(u for u, p in case.items() if p.endswith("CT_small.dcm"))
    assert outbox.send_counts() == {ct_uid: 1, odd.SOPInstanceUID: 2}
    assert stored_in_study(pacs, study_of(case.values())) == [ct_uid]


def test_held_after_max_attempts(pacs, tmp_path):
    dest = Destination.from_dict(pacs.destination(protocol="cstore", port=pacs.dicom_port + 1, timeout=2))
    outbox = Outbox(str(tmp_path / "outbox"), dest=dest, backoff_base=0, backoff_cap=0, max_attempts=2)
    item = outbox.enqueue(make_case(tmp_path / "d").values(), label="d")
    with pacs.inside():
        r1, r2, r3 = outbox.flush(), outbox.flush(), outbox.flush()
    assert item in r1.failed and "unreachable" in r1.failed[item]
    assert item in r2.failed and r3.held == [item] and not r3.failed
    assert outbox.pending()[0]["attempts"] == 2 and outbox.pending()[0]["held"]


def test_handler_sends_run_results(pacs, tmp_path):
    from ignite.engine import Engine

    from common.handlers import PacsExportHandler

    out = tmp_path / "run"
    cases = {name: make_case(out / name, with_seg=(name == "p1")) for name in ("p1", "p2")}
    (out / "p1" / "predictions.csv").write_text("case\np1\n")  # not DICOM, not *.dcm: ignored
    handler = PacsExportHandler(str(out), dest=pacs.destination(protocol="cstore"))

    def step(engine, batch):  # what DicomResultWriter hands over: the files this run wrote, by case
        engine.state.dicom_results = {name: sorted(case.values()) for name, case in cases.items()}

    engine = Engine(step)
    handler.attach(engine)
    with pacs.inside():
        engine.run([0], max_epochs=1)
        handler(engine)  # a second run over the same results queues nothing
        handler(None)  # nor does sending the finished output folder (its predictions.csv is not DICOM)
    outbox = Outbox(handler.outbox_dir)
    assert outbox.pending() == [] and len(outbox.sent()) == 2
    for case in cases.values():
        assert stored_in_study(pacs, study_of(case.values())) == sorted(case)
    assert set(outbox.send_counts().values()) == {1}
    assert PacsExportHandler(str(out), dest=None).enabled is False  # pacs_dest left empty: no export


def test_handler_pacs_down_keeps_results(pacs, tmp_path, caplog):
    from common.handlers import PacsExportHandler

    out = tmp_path / "run"
    make_case(out / "p3")
    handler = PacsExportHandler(str(out), dest=pacs.destination(protocol="cstore", port=pacs.dicom_port + 1,
                                                                 timeout=2))
    with pacs.inside():
        handler(None)  # does not raise
    assert len(Outbox(handler.outbox_dir).pending()) == 1
    assert "item(s) wait in" in caplog.text


def test_credentials_and_destination_rules(tmp_path, monkeypatch):
    with pytest.raises(DestinationError, match="password"):
        Destination.from_dict({"dicomweb_url": "http://h/dicom-web", "password": "x"})
    with pytest.raises(DestinationError, match="must not hold a user"):
        Destination(dicomweb_url="http://u:p@h/dicom-web")
    with pytest.raises(DestinationError, match="needs ae_title"):
        Destination(dicomweb_url="http://h/dicom-web").check_protocol("cstore")
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine pacs.example login alice password s3cret\n")
    netrc_file.chmod(0o600)
    creds = load_credentials(str(netrc_file), url="https://pacs.example/dicom-web", env={})
    assert (creds.username, creds.password) == ("alice", "s3cret") and "s3cret" not in repr(creds) + str(creds)
    with pytest.raises(CredentialsError, match="no 'machine other"):
        load_credentials(str(netrc_file), url="https://other/dicom-web", env={})
    assert load_credentials(env={"MTL_PACS_USER": "bob", "MTL_PACS_PASSWORD": "pw"}) == Credentials("bob", "pw")
    assert load_credentials(env={}) is None
    with pytest.raises(CredentialsError, match="MTL_PACS_PASSWORD is not"):
        load_credentials(env={"MTL_PACS_USER": "bob"})
    assert [backoff_delay(n, 30, 300) for n in range(0, 6)] == [0, 30, 60, 120, 240, 300]
