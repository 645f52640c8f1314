"""Map the series of a DICOM study folder to modalities (t1, t1ce, t2, flair, ...) by a configurable rule.

A study folder may be nested in any way: its DICOM files are grouped by SeriesInstanceUID. Series that are not
images (SR, SEG, presentation states, ... e.g. results written back into the study) and files that are not DICOM
are ignored with a logged warning. Each image series is then given the modality of the FIRST rule it matches;
a rule matches when its regular expression is found (case-insensitive) in the series' SeriesDescription,
ProtocolName or SequenceName -- lower-cased, with every run of non-alphanumeric characters replaced by a space
(``"T1_POST-Gd"`` is searched as ``"t1 post gd"``) -- and the series holds every tag in ``required_tags`` (with a
non-empty value) and none in ``excluded_tags``.

In a bundle config the rule is a list of dicts, e.g.
``"modality_rules": [{"modality": "flair", "pattern": "flair"}, {"modality": "t1ce", "pattern": "t1",
"required_tags": ["ContrastBolusAgent"]}, ...]``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from pydicom.dataset import Dataset

from ..errors import DatasetError
from .series import NON_IMAGE_SOP_CLASSES, DicomSeries, list_dicom_files, read_series

__all__ = [
    "DEFAULT_MODALITY_RULES",
    "ModalityRule",
    "StudySeries",
    "find_study_series",
    "holds_dicom",
    "map_study_modalities",
    "parse_modality_rules",
    "read_study",
]

logger = logging.getLogger(__name__)

_DESCRIPTION_TAGS = ("SeriesDescription", "ProtocolName", "SequenceName")


@dataclass(frozen=True)
class ModalityRule:
    """Give ``modality`` to a series whose description matches ``pattern`` (see the module docstring).

    Attributes:
        modality: the modality name (a datalist key, e.g. ``"t1ce"``).
        pattern: regular expression searched in the normalised SeriesDescription / ProtocolName / SequenceName.
        required_tags: DICOM keywords that must be present with a value (e.g. ``ContrastBolusAgent``).
        excluded_tags: DICOM keywords that must be absent or empty.
    """

    modality: str
    pattern: str
    required_tags: tuple[str, ...] = ()
    excluded_tags: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.modality:
            raise ValueError("modality must be a non-empty name.")
        try:
            re.compile(self.pattern)
        except re.error as err:
            raise ValueError(f"pattern {self.pattern!r} of modality '{self.modality}' is not a regex: {err}") from err

    def matches(self, header: Dataset) -> bool:
        """Whether the series whose (first) header is ``header`` matches this rule."""
        if any(not header.get(tag, None) for tag in self.required_tags):
            return False
        if any(header.get(tag, None) for tag in self.excluded_tags):
            return False
        regex = re.compile(self.pattern, re.IGNORECASE)
        return any(regex.search(_normalise(header.get(tag, ""))) for tag in _DESCRIPTION_TAGS)


def _normalise(value: object) -> str:
    return re.sub(r"[^0-9a-z]+", " ", str(value or "").lower()).strip()


#: Default rule for the BraTS modalities; the first matching rule wins, so specific rules come first.
DEFAULT_MODALITY_RULES: tuple[ModalityRule, ...] = (
    ModalityRule("flair", r"flair|\bdark fluid\b"),
    ModalityRule(
        "t1ce",
        r"\bt1w? ?(ce|c|gd|post|contrast)\b|\bt1w?\b.*\b(post|gd|gad|gado|contrast|ce)\b|\bmprage\b.*\b(post|gd|ce)\b",
    ),
    ModalityRule("t1ce", r"\bt1w?\b|\bmprage\b|\bspgr\b", required_tags=("ContrastBolusAgent",)),
    ModalityRule("t2", r"\bt2w?\b"),
    ModalityRule("t1", r"\bt1w?\b|\bmprage\b|\bspgr\b"),
)


def parse_modality_rules(rules: Sequence[ModalityRule | Mapping | Sequence] | None) -> tuple[ModalityRule, ...]:
    """Rules from a config: :class:`ModalityRule` objects, dicts of its fields, or ``(modality, pattern)`` pairs.

    ``None`` gives :data:`DEFAULT_MODALITY_RULES`.
    """
    if rules is None:
        return DEFAULT_MODALITY_RULES
    parsed = []
    for rule in rules:
        if isinstance(rule, ModalityRule):
            parsed.append(rule)
        elif isinstance(rule, Mapping):
            unknown = set(rule) - {"modality", "pattern", "required_tags", "excluded_tags"}
            if unknown or "modality" not in rule or "pattern" not in rule:
                raise ValueError(f"rules: each dict needs 'modality' and 'pattern' (optional 'required_tags', "
                                 f"'excluded_tags'); got keys {sorted(rule)}.")
            parsed.append(ModalityRule(
                rule["modality"], rule["pattern"], tuple(rule.get("required_tags", ())),
                tuple(rule.get("excluded_tags", ())),
            ))
        elif isinstance(rule, Sequence) and not isinstance(rule, str) and 2 <= len(rule) <= 4:
            parsed.append(ModalityRule(rule[0], rule[1], *(tuple(r) for r in rule[2:])))
        else:
            raise ValueError(f"rules: cannot read rule {rule!r} (expected a ModalityRule, a dict or a pair).")
    if not parsed:
        raise ValueError("rules must hold at least one rule.")
    return tuple(parsed)


@dataclass
class StudySeries:
    """One image series found in a study folder.

    Attributes:
        series_uid: SeriesInstanceUID.
        description: SeriesDescription (empty if absent).
        files: its files, sorted by path.
        folder: the folder holding only this series' files (searched recursively), or None when it shares its
            folder with other files.
        header: the header of its first file.
    """

    series_uid: str
    description: str
    files: list[Path]
    folder: Path | None
    header: Dataset = field(repr=False)

    @property
    def source(self) -> str | list[str]:
        """What :func:`~common.dicom.series.read_series` and ``DicomSeriesReader`` take: the folder, or the files."""
        return str(self.folder) if self.folder is not None else [str(f) for f in self.files]

    def label(self) -> str:
        where = self.folder if self.folder is not None else f"{len(self.files)} files in {self.files[0].parent}"
        return f"'{self.description}' ({where})"


def holds_dicom(folder: str | PathLike) -> bool:
    """Whether a folder holds (at any depth) a ``.dcm`` file or a file with the DICOM preamble ``DICM``."""
    for root, _, names in os.walk(folder):
        for name in names:
            if name.lower().endswith(".dcm"):
                return True
            try:
                with open(os.path.join(root, name), "rb") as handle:
                    handle.seek(128)
                    if handle.read(4) == b"DICM":
                        return True
            except OSError:
                continue
    return False


def find_study_series(study_dir: str | PathLike) -> list[StudySeries]:
    """The image series of a study folder (any nesting), grouped by SeriesInstanceUID, sorted by SeriesNumber.

    Raises:
        DatasetError: the folder does not exist or holds no DICOM image series.
    """
    study = Path(study_dir)
    if not study.is_dir():
        raise DatasetError(f"study {study}: folder does not exist.")
    try:
        files, _ = list_dicom_files(study)
    except DatasetError as err:
        raise DatasetError(f"study {study}: no DICOM files found (empty folder, or only non-DICOM files).") from err
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for path, header in files:
        groups.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((path, header))
    series = []
    for uid, members in groups.items():
        header = members[0][1]
        sop_class = str(header.get("SOPClassUID", ""))
        if sop_class in NON_IMAGE_SOP_CLASSES or "PixelData" not in header:
            kind = NON_IMAGE_SOP_CLASSES.get(sop_class, f"SOP class {sop_class}")
            logger.warning("study %s: ignoring non-image series %s (%s, %d files).", study, uid, kind, len(members))
            continue
        paths = [p for p, _ in members]
        series.append(StudySeries(uid, str(header.get("SeriesDescription", "")), paths, None, header))
    if not series:
        raise DatasetError(f"study {study}: no DICOM image series found ({len(files)} DICOM files, none an image).")
    # A series owns the deepest common folder of its files when no file of another series lies under it.
    all_files = [p for p, _ in files]
    for item in series:
        common = Path(os.path.commonpath([str(p.parent) for p in item.files]))
        own = set(item.files)
        if all(p in own for p in all_files if common in p.parents):
            item.folder = common
    series.sort(key=lambda s: (int(s.header.get("SeriesNumber", 0) or 0), s.description, s.series_uid))
    return series


def map_study_modalities(
    study_dir: str | PathLike,
    modalities: Sequence[str],
    rules: Sequence[ModalityRule | Mapping | Sequence] | None = None,
) -> dict[str, StudySeries]:
    """Find the one series of each requested modality in a study folder.

    Args:
        study_dir: the study folder.
        modalities: modality names wanted, e.g. ``["t1", "t1ce", "t2", "flair"]``.
        rules: ordered rules (see :func:`parse_modality_rules`); default :data:`DEFAULT_MODALITY_RULES`.

    Returns:
        ``{modality: StudySeries}`` in ``modalities`` order.

    Raises:
        ValueError: ``modalities`` empty, or a modality no rule can give.
        DatasetError: no series or two series for a requested modality (naming the study and the series).
    """
    if isinstance(modalities, str):
        modalities = [modalities]
    if not modalities:
        raise ValueError("modalities must name at least one modality.")
    rules = parse_modality_rules(rules)
    known = {r.modality for r in rules}
    unknown = [m for m in modalities if m not in known]
    if unknown:
        raise ValueError(f"modalities {unknown} have no rule; the rules give {sorted(known)}.")
    study = Path(study_dir)
    found: dict[str, list[StudySeries]] = {}
    for item in find_study_series(study):
        modality = next((r.modality for r in rules if r.matches(item.header)), None)
        logger.debug("study %s: series %s -> %s", study, item.label(), modality)
        if modality is not None:
            found.setdefault(modality, []).append(item)
    result = {}
    seen = None
    for modality in modalities:
        matches = found.get(modality, [])
        if not matches:
            if seen is None:
                seen = ", ".join(s.label() for s in find_study_series(study))
            raise DatasetError(f"study {study}: no series matches modality '{modality}'; series seen: {seen}.")
        if len(matches) > 1:
            raise DatasetError(f"study {study}: {len(matches)} series match modality '{modality}': "
                               f"{' and '.join(s.label() for s in matches)}; keep one or change the modality rule.")
        result[modality] = matches[0]
    return result


def read_study(
    study_dir: str | PathLike,
    modalities: Sequence[str],
    rules: Sequence[ModalityRule | Mapping | Sequence] | None = None,
) -> dict[str, DicomSeries]:
    """Read the series of each requested modality of a study (see :func:`map_study_modalities`)."""
    return {m: read_series(s.source) for m, s in map_study_modalities(study_dir, modalities, rules).items()}
