"""Datalists of unlabelled images for self-supervised pre-training: the training split's images (labels dropped)
plus folders of photographs or of case folders of volumes, never an image of a held-out (validation/test) split."""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from .brats import build_brats_datalist
from .fundus import FUNDUS_IMAGE_SUFFIXES, list_fundus_images

__all__ = ["build_unlabelled_datalist"]

logger = logging.getLogger(__name__)


def _files(record: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """The file paths a record holds under ``keys`` (lists flattened)."""
    out: list[str] = []
    stack = [record.get(k) for k in keys]
    while stack:
        value = stack.pop()
        if isinstance(value, (str, PathLike)):
            out.append(str(value))
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return out


def _resolved(paths: Iterable[str]) -> set[str]:
    return {str(Path(p).resolve()) for p in paths}


def _folders(folders: Sequence[str | PathLike] | str | PathLike | None) -> list[str]:
    if folders is None or folders == "":
        return []
    if isinstance(folders, (str, PathLike)):
        return [str(folders)]
    return [str(f) for f in folders]


def build_unlabelled_datalist(
    records: Sequence[Mapping[str, Any]],
    folders: Sequence[str | PathLike] | str | PathLike | None = (),
    keys: Sequence[str] = ("image",),
    held_out: Sequence[Mapping[str, Any]] = (),
    modalities: Sequence[str] | None = None,
    extensions: Sequence[str] = FUNDUS_IMAGE_SUFFIXES,
) -> list[dict]:
    """Records of unlabelled images: ``records`` (a training split) with only ``keys``, ``"case"`` and
    ``"image_id"`` kept, then the images of every folder of ``folders``.

    A folder holds photographs (``modalities`` None: the files directly in it or in its ``images/`` folder, see
    :func:`~common.data.list_fundus_images`; or give a glob pattern of photographs, e.g.
    ``data/les_av/images/*[0-9].png`` to leave out the label maps lying beside them) or case folders of volumes
    (``modalities`` given: see :func:`~common.data.build_brats_datalist`, segmentations not needed). A folder image
    that is also an image of ``held_out`` (the validation and test records of the data set, compared by resolved
    path) is left out, with a warning counting them, so pre-training never sees an image of a split that is
    evaluated.

    Args:
        records: the training split's records.
        folders: folders (or glob patterns of photographs) of further unlabelled images: a path or a list of them;
            None or empty for none.
        keys: the record keys of the image files (``["image"]``, or the modality keys of volumes).
        held_out: records whose images pre-training must not see.
        modalities: modalities of the volumes in ``folders`` (None: the folders hold photographs).
        extensions: file suffixes read as photographs.

    Raises:
        DatasetError: a folder does not exist or holds no image (the message names it), or no image at all.
    """
    keys = [str(k) for k in ([keys] if isinstance(keys, str) else keys)]
    if not keys:
        raise ValueError("keys must name at least one image key.")
    keep = [*keys, "case", "image_id"]
    out = [{k: r[k] for k in keep if k in r} for r in records]
    for r in out:
        r["source"] = "training split"
    held = _resolved(f for r in held_out for f in _files(r, keys))
    in_train = _resolved(f for r in out for f in _files(r, keys))
    held_hits = train_hits = 0
    for folder in _folders(folders):
        path = Path(folder)
        if any(c in folder for c in "*?[") and not modalities:
            exts = {e.lower() for e in extensions}
            files = [Path(f) for f in sorted(glob.glob(folder)) if Path(f).suffix.lower() in exts]
            if not files:
                raise DatasetError(f"pretraining pattern {folder} matches no image {sorted(exts)} (setting "
                                   "'pretrain_dirs').")
            found = [{"image": str(f), "case": f.stem, "image_id": f.stem} for f in files]
        elif not path.is_dir():
            raise DatasetError(f"pretraining folder {folder} is not a folder (setting 'pretrain_dirs').")
        elif modalities:
            found = build_brats_datalist(path, list(modalities), require_seg=False)
        else:
            found = list_fundus_images(path, extensions)
        for r in found:
            files = _resolved(_files(r, keys))
            if files & held:
                held_hits += 1
                continue
            if files & in_train:  # the training split's own images, given again
                train_hits += 1
                continue
            record = {k: r[k] for k in keep if k in r}
            record["source"] = str(folder)
            out.append(record)
    if held_hits:
        logger.warning(
            f"pretraining: {held_hits} image(s) of pretrain_dirs belong to the validation or test split of the data "
            "set and are left out."
        )
    if not out:
        raise DatasetError("pretraining: no image to pre-train on (the training split and pretrain_dirs are empty).")
    n_train = sum(r["source"] == "training split" for r in out)
    logger.info(
        f"pretraining on {len(out)} unlabelled image(s): {n_train} of the training split, {len(out) - n_train} from "
        f"pretrain_dirs{f' ({train_hits} already in the training split skipped)' if train_hits else ''}; "
        f"{len(held)} held-out file(s) never used."
    )
    return out
