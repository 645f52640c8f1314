"""DICOM Secondary Capture (SC) of a bundle's results: the source image with segment outlines and the key numbers
burned in, for PACS viewers that cannot show SEG or SR (highdicom ``SCImage``, Pillow for the text).

Each SC is a single-frame RGB Secondary Capture Image (highdicom 0.28.2 builds no multi-frame SC): one for a 2-D
image, a few key slices for a volume (see :func:`key_frames`). The picture is the source pixels (grey images
windowed to their 1st-99th percentile), scaled up by a whole factor to at least ``min_width`` pixels, with each
segment's outline in its own colour, above a black text panel: "NOT FOR DIAGNOSIS", the algorithm, a colour legend,
the given text lines and warnings. It goes in the source's study (patient and study attributes copied), in a new
series, and references the source image (SourceImageSequence) and series (ReferencedSeriesSequence).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pydicom
from monai.utils import optional_import
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from .frames import has_geometry, is_multiframe_volume, sort_source_datasets
from .photo import read_photo_dataset
from .seg import MANUFACTURER

hd, _ = optional_import("highdicom", descriptor="{} failed: DICOM SC output needs `pip install highdicom`")
Image, _ = optional_import("PIL.Image")
ImageDraw, _ = optional_import("PIL.ImageDraw")
ImageFont, _ = optional_import("PIL.ImageFont")
binary_erosion, _ = optional_import("scipy.ndimage", name="binary_erosion")

__all__ = [
    "NOT_FOR_DIAGNOSIS",
    "NOT_FOR_DIAGNOSIS_COLOUR",
    "OUTLINE_COLOURS",
    "key_frames",
    "outline",
    "patient_orientation",
    "render_capture",
    "write_secondary_captures",
]

NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSIS"

#: RGB outline colour of segment ``k`` (cycled): saturated colours that stay visible on grey and on fundus images.
OUTLINE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 0),  # yellow
    (0, 255, 255),  # cyan
    (255, 0, 255),  # magenta
    (0, 255, 0),  # green
    (255, 128, 0),  # orange
    (64, 128, 255),  # blue
)
_WARNING_COLOUR = (255, 170, 80)
#: colour of the "NOT FOR DIAGNOSIS" line.
NOT_FOR_DIAGNOSIS_COLOUR = (255, 64, 64)
_TEXT_COLOUR = (255, 255, 255)


def key_frames(masks: np.ndarray | None, n_frames: int, max_frames: int = 5) -> list[int]:
    """The frames of a volume shown in SCs, in frame order.

    With a segmentation: every segmented frame when there are at most ``max_frames``, else the frame of largest
    segmented area (all segments together) and frames evenly spaced from the first to the last segmented frame, so
    the largest extent and both ends of the finding are shown. Without one (no masks, or all empty): the middle frame.

    Args:
        masks: ``(n_frames, Rows, Columns, n_segments)`` or ``(n_frames, Rows, Columns)`` masks, or None.
        n_frames: number of frames of the volume.
        max_frames: most frames returned (>= 1).

    Raises:
        ValueError: ``max_frames`` < 1, or ``masks`` do not have ``n_frames`` frames.
    """
    if int(max_frames) < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}.")
    if masks is None:
        return [n_frames // 2]
    masks = np.asarray(masks)
    if masks.shape[0] != n_frames:
        raise ValueError(f"masks have {masks.shape[0]} frames, expected {n_frames}.")
    union = masks.any(axis=-1) if masks.ndim == 4 else masks.astype(bool)
    area = union.reshape(n_frames, -1).sum(axis=1)
    found = np.flatnonzero(area)
    if found.size == 0:
        return [n_frames // 2]
    if found.size <= max_frames:
        return found.tolist()
    largest = int(np.argmax(area))
    spread = np.unique(np.rint(np.linspace(found[0], found[-1], max_frames)).astype(int)).tolist()
    if largest not in spread:  # replace the evenly spaced frame nearest to it
        spread[int(np.argmin([abs(f - largest) for f in spread]))] = largest
    return sorted(set(spread))


def outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The inner boundary of a 2-D ``mask``, ``thickness`` pixels wide (the mask minus its erosion)."""
    mask = np.asarray(mask, dtype=bool)
    if thickness < 1:
        raise ValueError(f"thickness must be >= 1, got {thickness}.")
    if not mask.any():
        return mask.copy()
    # border_value=0: a mask touching the image edge is outlined along the edge too
    return mask & ~binary_erosion(mask, iterations=int(thickness), border_value=0)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font in Pillow itself
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()  # the bitmap font


def _wrap(text: str, font, width: float) -> list[str]:
    """``text`` split at spaces into lines no wider than ``width`` pixels (a word longer than that stays whole)."""
    lines: list[str] = []
    for part in str(text).splitlines() or [""]:
        line = ""
        for word in part.split(" "):
            trial = f"{line} {word}" if line else word
            if line and font.getlength(trial) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def render_capture(
    image: np.ndarray,
    masks: np.ndarray | None = None,
    segments: Sequence[str] = (),
    lines: Sequence[str] = (),
    warnings: Sequence[str] = (),
    title: str = "",
    min_width: int = 512,
) -> tuple[np.ndarray, int]:
    """The SC picture: ``image`` scaled up, segment outlines drawn, a text panel below.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        masks: ``(H, W, n_segments)`` boolean masks aligned with ``image``, or None.
        segments: segment names (legend), in the order of the masks' last axis.
        lines: text lines under the legend (the numbers).
        warnings: lines in a warning colour after them.
        title: a line after "NOT FOR DIAGNOSIS" (e.g. the algorithm and version).
        min_width: the image is scaled up by the smallest whole factor that makes it at least this wide.

    Returns:
        The ``(rows, columns, 3)`` uint8 picture (the image in its top ``H * scale`` rows) and ``scale``.

    Raises:
        ValueError: bad image or masks shape.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got shape {image.shape} {image.dtype}.")
    h, w = image.shape[:2]
    if masks is not None:
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3 or masks.shape[:2] != (h, w) or masks.shape[2] != len(segments):
            raise ValueError(
                f"masks must be (H={h}, W={w}, n_segments={len(segments)}), got shape {masks.shape}."
            )
    scale = max(1, -(-int(min_width) // w))
    picture = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    width = w * scale
    thickness = max(1, width // 256)
    if masks is not None:
        for k in range(masks.shape[2]):
            up = np.repeat(np.repeat(masks[..., k], scale, axis=0), scale, axis=1)
            picture[outline(up, thickness)] = OUTLINE_COLOURS[k % len(OUTLINE_COLOURS)]

    size = max(10, min(48, width // 32))
    font, margin = _font(size), max(2, size // 3)
    step = size + max(2, size // 4)
    entries: list[tuple[str, tuple[int, int, int]]] = [(NOT_FOR_DIAGNOSIS, NOT_FOR_DIAGNOSIS_COLOUR)]
    entries += [(t, _TEXT_COLOUR) for t in ([title] if title else [])]
    entries += [(f"outline: {s}", OUTLINE_COLOURS[k % len(OUTLINE_COLOURS)]) for k, s in enumerate(segments)]
    entries += [(t, _TEXT_COLOUR) for t in lines] + [(f"WARNING: {t}", _WARNING_COLOUR) for t in warnings]
    wrapped = [(part, colour) for text, colour in entries for part in _wrap(text, font, width - 2 * margin)]
    panel = Image.new("RGB", (width, 2 * margin + step * len(wrapped)), (0, 0, 0))
    draw = ImageDraw.Draw(panel)
    for i, (text, colour) in enumerate(wrapped):
        draw.text((margin, margin + i * step), text, fill=colour, font=font)
    return np.concatenate([picture, np.asarray(panel, dtype=np.uint8)], axis=0), scale


def patient_orientation(ds: Dataset) -> list[str]:
    """PatientOrientation of an image with plane geometry: the patient directions of its rows and columns (LPS
    letters, largest component first, e.g. ``["L", "P"]`` for an axial slice); the source's own value otherwise."""
    if "ImageOrientationPatient" not in ds:
        value = ds.get("PatientOrientation", "")
        return list(value) if value else []
    iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)

    def letters(v: np.ndarray) -> str:
        order = np.argsort(-np.abs(v))
        return "".join(("LPH"[i] if v[i] > 0 else "RAF"[i]) for i in order if abs(v[i]) > 1e-3)

    return [letters(iop[:3]), letters(iop[3:])]


def _with_pixels(ds: Dataset) -> Dataset:
    """``ds`` with its pixel data (read again from its file when it was read without)."""
    if "PixelData" in ds:
        return ds
    path = getattr(ds, "filename", None)
    if not path:
        raise ValueError(f"source image {ds.get('SOPInstanceUID', '?')} has no pixel data and no file to read it from.")
    return pydicom.dcmread(path)


def _window(frames: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Grey ``frames`` to uint8, the ``low``-``high`` percentile range stretched over 0-255."""
    frames = np.asarray(frames, dtype=np.float32)
    lo, hi = np.percentile(frames, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((frames - lo) / (hi - lo), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _grey_frames(ds: Dataset, indices: Sequence[int] | None) -> np.ndarray:
    """Frames of a grey image as float (modality LUT applied; MONOCHROME1 inverted), ``(n, Rows, Columns)``."""
    from pydicom.pixels import apply_modality_lut

    pixels = ds.pixel_array
    pixels = pixels[None] if pixels.ndim == 2 else pixels
    if indices is not None:
        pixels = pixels[list(indices)]
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        pixels = apply_modality_lut(pixels, ds)
    pixels = np.asarray(pixels, dtype=np.float32)
    return -pixels if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1" else pixels


def _source_pictures(sources: Sequence[Dataset], frames: Sequence[int]) -> list[np.ndarray]:
    """The RGB uint8 picture of each of ``frames`` (indices in :func:`sort_source_datasets` / file frame order)."""
    if len(sources) == 1 and is_multiframe_volume(sources[0]):
        ds = _with_pixels(sources[0])
        grey = _grey_frames(ds, frames)
    else:
        chosen = [_with_pixels(sources[k]) for k in frames]
        if int(chosen[0].get("SamplesPerPixel", 1)) == 3:
            return [read_photo_dataset(ds, getattr(ds, "filename", None)) for ds in chosen]
        grey = np.concatenate([_grey_frames(ds, None) for ds in chosen])
    windowed = _window(grey)  # one window for all key frames, so they look alike
    return [np.repeat(f[..., None], 3, axis=-1) for f in windowed]


def _reference(source: Dataset, frame: int | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame is not None:
        item.ReferencedFrameNumber = frame + 1
    purpose = codes.DCM.SourceImageForImageProcessingOperation
    item.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept(purpose.value, purpose.scheme_designator, purpose.meaning)
    ]
    return item


def write_secondary_captures(
    source_datasets: Sequence[Dataset],
    out_dir: str,
    algorithm_name: str,
    algorithm_version: str,
    masks: np.ndarray | None = None,
    segments: Sequence[str] = (),
    lines: Sequence[str] = (),
    warnings: Sequence[str] = (),
    frame_lines: Mapping[int, Sequence[str]] | None = None,
    max_frames: int = 5,
    series_description: str | None = None,
    series_number: int = 903,
    min_width: int = 512,
    manufacturer: str = MANUFACTURER,
) -> list[str]:
    """Write SC images of the source with segment outlines and text to ``out_dir``; return their paths.

    A 2-D image (no plane geometry) gives ``out_dir/sc.dcm``; a volume gives ``out_dir/sc_<frame>.dcm`` for the
    frames chosen by :func:`key_frames` (frame = index in :func:`~common.dicom.frames.sort_source_datasets` order,
    or in file frame order for one multi-frame image), one series for all.

    Args:
        source_datasets: the source images (pixel data is read from their files where they were read without).
        out_dir: output folder.
        algorithm_name, algorithm_version: the bundle's name and version (text and equipment attributes).
        masks: ``(n_frames, Rows, Columns, n_segments)`` masks aligned with the source frames (see
            :func:`~common.dicom.frames.mask_to_source_frames`), or None.
        segments: segment names, in the order of the masks' last axis.
        lines: text lines for every SC (e.g. ``"tumour volume: 15230 mm3"``).
        warnings: warning lines for every SC.
        frame_lines: extra lines for the SC of a frame, by frame index.
        max_frames: most SCs for a volume.
        series_description: SeriesDescription (default ``"<algorithm_name> overlay, not for diagnosis"``).
        series_number: SeriesNumber of the SC series.
        min_width: smallest width of the picture (small images are scaled up by a whole factor).
        manufacturer: Manufacturer of the SC.

    Raises:
        ValueError: masks that do not fit the source frames or ``segments``.
    """
    sources = sort_source_datasets(source_datasets)
    multiframe = len(sources) == 1 and is_multiframe_volume(sources[0])
    n = int(sources[0].NumberOfFrames) if multiframe else len(sources)
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if masks is not None:
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != (n, rows, cols, len(segments)):
            raise ValueError(
                f"masks shape {masks.shape} does not fit {n} source frame(s) of {rows}x{cols} and "
                f"{len(segments)} segment(s)."
            )
    volume = multiframe or has_geometry(sources[0])
    frames = key_frames(masks, n, max_frames) if volume else [0]
    pictures = _source_pictures(sources, frames)
    title = f"{algorithm_name} {algorithm_version}"
    series_uid = hd.UID()
    paths = []
    os.makedirs(out_dir, exist_ok=True)
    for number, (frame, picture) in enumerate(zip(frames, pictures), start=1):
        source = sources[0] if multiframe else sources[frame]
        extra = list((frame_lines or {}).get(frame, ()))
        if volume:
            extra = [f"image {frame + 1} of {n}"] + extra
        pixels, _ = render_capture(
            picture,
            None if masks is None else masks[frame],
            segments,
            list(lines) + extra,
            warnings,
            title,
            min_width,
        )
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=pixels,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_uid,
            series_number=int(series_number),
            sop_instance_uid=hd.UID(),
            instance_number=number,
            manufacturer=manufacturer,
            patient_orientation=("L", "P"),  # replaced below: highdicom takes single letters only
            transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
            series_description=(series_description or f"{algorithm_name} overlay, not for diagnosis")[:64],
            manufacturer_model_name=str(algorithm_name)[:64],
            software_versions=str(algorithm_version)[:64],
        )
        sc.PatientOrientation = patient_orientation(source)
        laterality = source.get("ImageLaterality", source.get("Laterality", ""))
        if laterality in ("R", "L", "U", "B"):
            sc.ImageLaterality = laterality
        else:  # General Series, Type 2C where no Image Laterality is sent: present, empty (unknown)
            sc.Laterality = ""
        # the burned-in text names no patient: BurnedInAnnotation means "enough to identify the patient" (PS3.3)
        sc.BurnedInAnnotation = "NO"
        sc.RecognizableVisualFeatures = "NO"
        sc.ImageComments = f"{NOT_FOR_DIAGNOSIS}: results of {title} burned in"[:10240]
        sc.DerivationDescription = f"{NOT_FOR_DIAGNOSIS}: segment outlines and results of {title}"[:1024]
        sc.SourceImageSequence = [_reference(source, frame if multiframe else None)]
        series = Dataset()
        series.SeriesInstanceUID = source.SeriesInstanceUID
        instance = Dataset()
        instance.ReferencedSOPClassUID = source.SOPClassUID
        instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
        series.ReferencedInstanceSequence = [instance]
        sc.ReferencedSeriesSequence = [series]
        name = f"sc_{frame:03d}.dcm" if volume else "sc.dcm"
        path = os.path.join(out_dir, name)
        sc.save_as(path)
        paths.append(path)
    return paths
