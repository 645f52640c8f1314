"""Validate DICOM files against their IOD with ``dciodvfy`` (dicom3tools), and the Secondary Captures the bundles
write against their source."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from common.dicom.sc import NOT_FOR_DIAGNOSIS_COLOUR, OUTLINE_COLOURS, outline

__all__ = ["DCIODVFY", "assert_secondary_capture", "dciodvfy_errors", "dciodvfy_report"]

DCIODVFY = shutil.which("dciodvfy")


def dciodvfy_report(path: str) -> str:
    """Return the full ``dciodvfy`` output (stdout and stderr) for ``path``."""
    if DCIODVFY is None:
        raise RuntimeError("dciodvfy (dicom3tools) is not on PATH: apt-get install dicom3tools.")
    result = subprocess.run([DCIODVFY, "-new", str(path)], capture_output=True, text=True, timeout=120)
    return result.stdout + result.stderr


def dciodvfy_errors(path: str) -> list[str]:
    """Return the lines of ``dciodvfy``'s report on ``path`` that start with ``Error``."""
    return [line for line in dciodvfy_report(path).splitlines() if line.startswith("Error")]


SC_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def assert_secondary_capture(path: str, source: pydicom.Dataset, masks: np.ndarray, frame: int | None = None) -> None:
    """``path`` is a valid SC in ``source``'s study, new series, referencing ``source`` (its ``frame``, from 0, for a
    multi-frame source), with segment ``k``'s outline colour exactly on the inner boundary of ``masks[..., k]``
    (``(Rows, Columns, n_segments)``, aligned with the source) and the red "NOT FOR DIAGNOSIS" line in the panel."""
    if DCIODVFY is None:
        pytest.skip("dciodvfy (dicom3tools) is not on PATH: scripts/install_system.sh installs it")
    assert dciodvfy_errors(path) == [], f"dciodvfy errors in {path}:\n" + dciodvfy_report(path)
    sc = pydicom.dcmread(path)
    assert sc.SOPClassUID == SC_SOP_CLASS and sc.Modality == "OT"
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.PatientID == source.PatientID
    assert sc.PatientName == source.PatientName and sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"] and sc.BurnedInAnnotation == "NO"
    assert "NOT FOR DIAGNOSIS" in sc.ImageComments and "not for diagnosis" in sc.SeriesDescription
    ref = sc.SourceImageSequence[0]
    assert (ref.ReferencedSOPInstanceUID, ref.ReferencedSOPClassUID) == (source.SOPInstanceUID, source.SOPClassUID)
    assert ref.get("ReferencedFrameNumber") == (None if frame is None else frame + 1)
    assert sc.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    rows, cols = int(source.Rows), int(source.Columns)
    scale = int(sc.Columns) // cols
    assert scale >= 1 and int(sc.Columns) == cols * scale and int(sc.Rows) > rows * scale
    pixels = sc.pixel_array
    picture, panel = pixels[: rows * scale], pixels[rows * scale :]
    assert np.all(panel == NOT_FOR_DIAGNOSIS_COLOUR, axis=-1).any(), "no NOT FOR DIAGNOSIS line in the text panel"
    masks = np.asarray(masks, dtype=bool)
    for k in range(masks.shape[-1]):
        coloured = np.all(picture == OUTLINE_COLOURS[k], axis=-1)
        up = np.repeat(np.repeat(masks[..., k], scale, axis=0), scale, axis=1)
        assert not (coloured & ~up).any(), f"segment {k}: outline colour outside its mask"
        later = masks[..., k + 1 :].any(axis=-1)  # later segments' outlines are drawn over this one
        edge = outline(masks[..., k]) & ~later
        blocks = coloured.reshape(rows, scale, cols, scale).any(axis=(1, 3))
        assert edge.any() == masks[..., k].any()
        assert blocks[edge].all(), f"segment {k}: boundary pixels without outline colour"
        inside = masks[..., k] & ~outline(masks[..., k], 2 + int(sc.Columns) // 256 // scale)  # beyond the outline
        assert not blocks[inside].any(), f"segment {k}: filled, not outlined"
