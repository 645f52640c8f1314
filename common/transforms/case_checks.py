"""Checks of a loaded multimodal case (before stacking): one clear error naming the case and the file."""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import MapTransform

from ..errors import case_error

__all__ = ["CheckMultimodalCased"]


def _filename(img: Any, fallback: str) -> str:
    meta = getattr(img, "meta", None) or {}
    name = meta.get("filename_or_obj", fallback)
    return str(name[0] if isinstance(name, (list, tuple)) and name else name)


def _spatial(img: Any) -> tuple[int, ...]:
    shape = tuple(int(s) for s in img.shape)
    # LoadImaged(ensure_channel_first=True) gives (1, X, Y, Z); accept a bare (X, Y, Z) too.
    return shape[1:] if len(shape) == 4 else shape


def _affine(img: Any) -> np.ndarray | None:
    affine = getattr(img, "affine", None)
    return None if affine is None else np.asarray(torch.as_tensor(affine).cpu(), dtype=np.float64)


class CheckMultimodalCased(MapTransform):
    """Check the modalities (and segmentation) of one case, as loaded by ``LoadImaged(ensure_channel_first=True)``.

    Checked: each volume is 3-D (one channel); no NaN or infinite voxels; every modality and the segmentation have
    the same shape and the same orientation and voxel spacing (affine within ``atol``); the segmentation holds
    integers from ``label_values`` only. The error (:class:`~common.errors.DatasetError`) names the case and the file.

    Args:
        keys: modality keys, in channel order.
        label_key: segmentation key (checked when present in the data; None to skip).
        label_values: allowed segmentation labels; None allows any integer.
        case_key: key of the case id used in messages.
        atol: absolute tolerance on affine entries (mm).
        allow_missing_keys: don't raise when a modality key is absent.
    """

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable,
        label_key: str | None = "seg",
        label_values: Collection[int] | None = None,
        case_key: str = "case",
        atol: float = 1e-3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if atol < 0:
            raise ValueError(f"atol must be >= 0, got {atol}.")
        self.label_key, self.case_key, self.atol = label_key, case_key, atol
        self.label_values = None if label_values is None else sorted(int(v) for v in label_values)

    def _check_voxels(self, case: str, key: Hashable, img: Any) -> None:
        path = _filename(img, str(key))
        shape = tuple(int(s) for s in img.shape)
        if len(shape) != 4 or shape[0] != 1:
            raise case_error(case, path, f"expected one 3-D volume, got array shape {shape} (channel first).")
        data = torch.as_tensor(img)
        if data.is_floating_point():
            n_nan = int(torch.isnan(data).sum())
            if n_nan:
                raise case_error(case, path, f"holds {n_nan} NaN voxel(s).")
            n_inf = int(torch.isinf(data).sum())
            if n_inf:
                raise case_error(case, path, f"holds {n_inf} infinite voxel(s).")

    def _check_geometry(self, case: str, ref: Any, img: Any, what: str) -> None:
        ref_path, path = _filename(ref, "reference"), _filename(img, what)
        if _spatial(img) != _spatial(ref):
            raise case_error(
                case, path, f"{what} shape {_spatial(img)} differs from shape {_spatial(ref)} of {Path(ref_path).name}."
            )
        a_ref, a_img = _affine(ref), _affine(img)
        if a_ref is None or a_img is None:
            return
        codes_ref, codes_img = nib.aff2axcodes(a_ref), nib.aff2axcodes(a_img)
        if codes_ref != codes_img:
            raise case_error(
                case,
                path,
                f"{what} orientation {''.join(codes_img)} differs from orientation "
                f"{''.join(codes_ref)} of {Path(ref_path).name}; resample the case to one grid.",
            )
        if not np.allclose(a_ref, a_img, atol=self.atol):
            raise case_error(
                case,
                path,
                f"{what} voxel grid (affine) differs from that of {Path(ref_path).name}: "
                f"spacing {np.round(np.linalg.norm(a_img[:3, :3], axis=0), 4).tolist()} vs "
                f"{np.round(np.linalg.norm(a_ref[:3, :3], axis=0), 4).tolist()}, origin "
                f"{np.round(a_img[:3, 3], 3).tolist()} vs {np.round(a_ref[:3, 3], 3).tolist()}.",
            )

    def _check_labels(self, case: str, seg: Any) -> None:
        path = _filename(seg, str(self.label_key))
        data = torch.as_tensor(seg)
        if data.is_floating_point() and not torch.equal(data, torch.round(data)):
            raise case_error(case, path, "segmentation holds non-integer values.")
        present = sorted(int(v) for v in torch.unique(data).tolist())
        if self.label_values is not None:
            bad = [v for v in present if v not in self.label_values]
            if bad:
                counts = {v: int((data == v).sum()) for v in bad}
                raise case_error(
                    case,
                    path,
                    f"segmentation labels {bad} are outside the allowed labels {self.label_values} "
                    f"(voxel counts {counts}); set seg_labels/seg_regions in the config to match the data.",
                )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case = str(d.get(self.case_key, "?"))
        ref = None
        for key in self.key_iterator(d):
            self._check_voxels(case, key, d[key])
            if ref is None:
                ref = d[key]
            else:
                self._check_geometry(case, ref, d[key], f"modality '{key}'")
        if ref is None:
            raise case_error(case, None, f"none of the modality keys {list(self.keys)} is present.")
        if self.label_key is not None and d.get(self.label_key) is not None:
            seg = d[self.label_key]
            self._check_voxels(case, self.label_key, seg)
            self._check_geometry(case, ref, seg, "segmentation")
            self._check_labels(case, seg)
        return d
