"""Two-stage fundus inference: locate the optic disc on the downsampled image, then segment and classify a crop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from scipy import ndimage
from torch import nn

from ..metrics.cup_disc import vertical_cdr
from ..transforms.colour_image import central_green_std
from ..transforms.disc_crop import crop_square, paste_crop
from ..transforms.intensity import standardize_channels

__all__ = ["DiscCropInferer", "central_green_std"]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum(mask, labels, index=range(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


class DiscCropInferer(Inferer):
    """Locate the optic disc, crop around it, segment disc and cup and classify on the crop, paste back.

    Stage 1: the whole image is resized to ``locator_size`` squared, standardised per channel and passed to
    ``locator`` (one disc logit channel); the largest connected component above 0.5 gives the disc's box. Stage 2:
    a square of ``crop_factor`` times the disc's larger extent around it is resampled to ``crop_size`` squared,
    standardised, and passed to ``network`` (``{seg_task: (B, 2, S, S) disc/cup logits, cls_task: (B, 1)}``).
    The segmentation logits are mapped back onto the full image (``fill`` outside the crop); the cup is kept
    inside the disc's largest component. No detectable disc: the crop is centred on the locator's most probable
    pixel with a side from ``default_disc_fraction`` of the image's short side, and ``disc_found`` is 0.

    Returns a dict: ``seg_task`` full-size logits, ``cls_task`` head logits, ``"vcdr"`` (vertical cup-to-disc
    ratio of the full-size masks, nan where no disc was segmented), ``"<cls_task>_vcdr"`` (logistic model on the
    vCDR, logit), ``"<cls_task>_fused"`` (logit of the mean of the head and vCDR probabilities, as Pascal et al.
    2022; the available one where a task is off), ``"disc_found"``, ``"crop_box"`` (row, col, side),
    ``"fundus_found"`` (0 for a blank or near-uniform frame) and ``"fundus_std"`` (its statistic).

    Before the locator, each image's :func:`central_green_std` is compared with ``min_fundus_std``: a frame below
    it (blank, white, black, near-uniform) is no fundus photograph and gets no result: its segmentation logits are
    ``fill``, its scores and vCDR nan, ``disc_found`` and ``fundus_found`` 0 (the locator is not asked).

    Args:
        locator: disc localisation network (stage 1); it is put in eval mode.
        locator_size: side of the square the whole image is resized to for the locator.
        crop_size: side of the stage-2 input.
        crop_factor: crop side relative to the located disc's larger extent.
        seg_task, cls_task: output keys of ``network``.
        vcdr_logistic: ``(slope, intercept)`` of ``logit P(glaucoma) = slope * vCDR + intercept``; None leaves the
            vCDR and fused scores as the head's.
        default_disc_fraction: disc extent assumed when none is found, relative to the image's short side.
        max_disc_area: largest plausible disc area as a fraction of the image; a larger component (e.g. on a blank
            or overexposed image) counts as no disc found.
        min_disc_contrast: the optic disc is the brightest structure of a fundus photograph: a located component
            whose mean (standardised, over channels) is not at least this much above the image mean counts as no
            disc found (a blank or uniform image has contrast 0).
        fill: logit given to pixels outside the crop.
        sources: the glaucoma estimates the trained model has: ``"head"`` and/or ``"vcdr"`` (a single-task model
            trained one task only: its other output is untrained and left out of the fused score).
        flip_tta: also run the crop model on the horizontally flipped crop and average the logits (test-time
            augmentation; doubles the stage-2 cost).
        min_fundus_std: smallest green-channel standard deviation (inputs in [0, 1]) inside the central disc of a
            fundus photograph; 0 turns the test off. Real photographs measure about 0.04-0.2, a blank frame with
            JPEG noise below 0.005.
    """

    def __init__(
        self,
        locator: nn.Module,
        locator_size: int = 256,
        crop_size: int = 160,
        crop_factor: float = 2.0,
        seg_task: str = "seg",
        cls_task: str = "cls",
        vcdr_logistic: Sequence[float] | None = None,
        default_disc_fraction: float = 0.15,
        max_disc_area: float = 0.25,
        min_disc_contrast: float = 0.25,
        fill: float = -20.0,
        sources: Sequence[str] = ("head", "vcdr"),
        flip_tta: bool = False,
        min_fundus_std: float = 0.01,
    ) -> None:
        super().__init__()
        for name, value in (("locator_size", locator_size), ("crop_size", crop_size)):
            if int(value) < 8:
                raise ValueError(f"{name} must be >= 8, got {value}.")
        if crop_factor <= 0:
            raise ValueError(f"crop_factor must be > 0, got {crop_factor}.")
        if vcdr_logistic is not None and len(vcdr_logistic) != 2:
            raise ValueError(f"vcdr_logistic must be (slope, intercept), got {vcdr_logistic}.")
        self.locator, self.locator_size, self.crop_size = locator, int(locator_size), int(crop_size)
        self.crop_factor, self.seg_task, self.cls_task = float(crop_factor), seg_task, cls_task
        self.vcdr_logistic = None if vcdr_logistic is None else tuple(float(v) for v in vcdr_logistic)
        if not 0.0 < max_disc_area <= 1.0:
            raise ValueError(f"max_disc_area must be in (0, 1], got {max_disc_area}.")
        self.default_disc_fraction, self.max_disc_area, self.fill = float(default_disc_fraction), max_disc_area, fill
        self.min_disc_contrast = float(min_disc_contrast)
        if not sources or any(src not in ("head", "vcdr") for src in sources):
            raise ValueError(f"sources must name 'head' and/or 'vcdr', got {sources}.")
        self.sources = tuple(sources)
        self.flip_tta = str(flip_tta).strip().lower() not in ("false", "0", "no")
        if min_fundus_std < 0:
            raise ValueError(f"min_fundus_std must be >= 0, got {min_fundus_std}.")
        self.min_fundus_std = float(min_fundus_std)

    @torch.no_grad()
    def locate(self, image: torch.Tensor) -> tuple[tuple[float, float, float], bool]:
        """Crop box ``(row, col, side)`` in full-image pixels for one ``(C, H, W)`` image; whether a disc was found."""
        h, w = image.shape[-2:]
        small = standardize_channels(F.interpolate(image[None].float(), size=(self.locator_size,) * 2, mode="area"))
        self.locator.eval()
        prob = torch.sigmoid(self.locator(small))[0, 0].cpu().numpy()
        mask = _largest_component(prob > 0.5)
        sr, sc = h / self.locator_size, w / self.locator_size
        brightness = small[0].mean(0).cpu().numpy()
        plausible = (
            mask.any()
            and mask.mean() <= self.max_disc_area
            and brightness[mask].mean() - brightness.mean() >= self.min_disc_contrast
        )
        if plausible:
            rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
            r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            extent = max((r1 - r0) * sr, (c1 - c0) * sc)
            return ((r0 + r1) / 2 * sr, (c0 + c1) / 2 * sc, self.crop_factor * extent), True
        r, c = np.unravel_index(int(np.argmax(prob)), prob.shape)
        extent = self.default_disc_fraction * min(h, w)
        return ((r + 0.5) * sr, (c + 0.5) * sc, self.crop_factor * extent), False

    def _vcdr_logit(self, vcdr: torch.Tensor) -> torch.Tensor:
        slope, intercept = self.vcdr_logistic  # type: ignore[misc]
        return slope * vcdr + intercept

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        if inputs.dim() != 4 or inputs.shape[1] != 3:
            raise ValueError(f"inputs must be (B, 3, H, W) colour images, got {list(inputs.shape)}.")
        b, _, h, w = inputs.shape
        fundus_std = central_green_std(inputs)
        is_fundus = fundus_std >= self.min_fundus_std
        segs, logits, vcdrs, found, boxes = [], [], [], [], []
        for i in range(b):
            if bool(is_fundus[i]):
                box, ok = self.locate(inputs[i])
            else:  # no photograph: the crop model still runs (output shapes), its results are discarded below
                box, ok = (h / 2, w / 2, self.crop_factor * self.default_disc_fraction * min(h, w)), False
            crop = standardize_channels(crop_square(inputs[i : i + 1], box, self.crop_size))
            out = network(crop, *args, **kwargs)
            seg_crop, cls = out[self.seg_task], out[self.cls_task]
            if self.flip_tta:
                flipped = network(torch.flip(crop, dims=(-1,)), *args, **kwargs)
                if seg_crop.numel():
                    seg_crop = (seg_crop + torch.flip(flipped[self.seg_task], dims=(-1,))) / 2
                if cls.numel():
                    cls = (cls + flipped[self.cls_task]) / 2
            if seg_crop.numel() and not bool(is_fundus[i]):
                seg, _ = inputs.new_full((1, seg_crop.shape[1], h, w), self.fill), vcdrs.append(float("nan"))
            elif seg_crop.numel():
                seg = paste_crop(seg_crop, box, h, w, fill=self.fill)
                disc = _largest_component((seg[0, 0] > 0).cpu().numpy())
                cup = (seg[0, 1] > 0).cpu().numpy() & disc
                seg = seg.clone()
                seg[0, 0][torch.from_numpy(~disc).to(seg.device)] = self.fill
                seg[0, 1][torch.from_numpy(~cup).to(seg.device)] = self.fill
                vcdrs.append(vertical_cdr(disc, cup))
            else:
                seg, _ = inputs.new_zeros((1, 0, h, w)), vcdrs.append(float("nan"))
            segs.append(seg)
            cls_ok = cls.numel() and bool(is_fundus[i])
            logits.append(cls.reshape(1, -1)[:, :1] if cls_ok else inputs.new_full((1, 1), float("nan")))
            found.append(float(ok))
            boxes.append(box)
        head = torch.cat(logits).float()
        vcdr = torch.tensor(vcdrs, dtype=torch.float32, device=inputs.device)
        head_ok = bool(torch.isfinite(head).any())
        vcdr_ok = self.vcdr_logistic is not None and bool(torch.isfinite(vcdr).any())
        use_head, use_vcdr = "head" in self.sources and head_ok, "vcdr" in self.sources and vcdr_ok
        if vcdr_ok:  # an image whose disc was not segmented has no vCDR: its vCDR score falls back to the head's
            vcdr_logit = self._vcdr_logit(vcdr)[:, None]
            vcdr_logit = torch.where(torch.isfinite(vcdr_logit), vcdr_logit, head if use_head else 0.0 * head)
        else:
            vcdr_logit = head
        if use_head and use_vcdr:
            fused = _logit((torch.sigmoid(head) + torch.sigmoid(vcdr_logit)) / 2)
        else:
            fused = head if use_head or not use_vcdr else vcdr_logit
        blank = ~is_fundus.to(head.device)[:, None]
        head, vcdr_logit, fused = (
            torch.where(blank, torch.full_like(t, float("nan")), t) for t in (head, vcdr_logit, fused)
        )
        return {
            self.seg_task: torch.cat(segs),
            self.cls_task: head,
            "vcdr": vcdr,
            f"{self.cls_task}_vcdr": vcdr_logit,
            f"{self.cls_task}_fused": fused,
            "disc_found": torch.tensor(found, device=inputs.device),
            "crop_box": torch.tensor(boxes, dtype=torch.float32, device=inputs.device),
            "fundus_found": is_fundus.float(),
            "fundus_std": fundus_std.float(),
        }
