"""Sliding-window inference for a network with a segmentation output and a whole-case classification output."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, sliding_window_inference

__all__ = ["SegClassSlidingWindowInferer"]

_CLS_MAP = "_cls_probability_map"


class SegClassSlidingWindowInferer(Inferer):
    """Segment a whole volume with overlapping windows and classify the case from the windows' predictions.

    The segmentation logits are stitched by MONAI's ``sliding_window_inference`` (windows blended with ``mode``
    weights; a volume larger than ``roi_size`` is covered, never cropped). Each window's class probability is
    spread over the window and blended the same way, giving a per-voxel probability map; the case probability is
    its average weighted by the predicted foreground probability (``aggregation="foreground"``, the tumour
    decides the genotype, windows without tumour count for nothing) or by nothing (``"mean"``, for a model
    without a trained segmentation head). Where the prediction holds no foreground the plain mean is used.

    Returns ``{seg_task: (B, R, *spatial) logits, cls_task: (B, n) logits}`` (logit of the aggregated
    probability; sigmoid per logit for ``n == 1`` or independent outputs, as the network was trained).

    Args:
        roi_size: window size, e.g. ``(96, 96, 3)`` for a 2.5-D network on 3-slice blocks.
        seg_task, cls_task: output keys of the network.
        sw_batch_size: windows per network call.
        overlap: window overlap fraction, one value or one per spatial axis.
        mode: blending, ``"gaussian"`` or ``"constant"``.
        aggregation: ``"foreground"`` or ``"mean"``.
        seg_postprocess: applied to the stitched segmentation logits before the case aggregation, e.g.
            :func:`common.transforms.keep_largest_component_logits`.
        sw_device, device: as in ``sliding_window_inference``.
    """

    def __init__(
        self,
        roi_size: Sequence[int],
        seg_task: str = "seg",
        cls_task: str = "cls",
        sw_batch_size: int = 4,
        overlap: float | Sequence[float] = 0.5,
        mode: str = "gaussian",
        aggregation: str = "foreground",
        seg_postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if aggregation not in ("foreground", "mean"):
            raise ValueError(f"aggregation must be 'foreground' or 'mean', got '{aggregation}'.")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}.")
        self.roi_size = [int(r) for r in roi_size]
        self.seg_task, self.cls_task = seg_task, cls_task
        self.sw_batch_size, self.overlap, self.mode, self.aggregation = sw_batch_size, overlap, mode, aggregation
        self.seg_postprocess = seg_postprocess
        self.sw_device, self.device = sw_device, device

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        seg_task, cls_task = self.seg_task, self.cls_task

        def predictor(window: torch.Tensor) -> dict[str, torch.Tensor]:
            out = network(window, *args, **kwargs)
            seg, logits = out[seg_task], out[cls_task]
            spatial = tuple(window.shape[2:])
            if seg.numel() == 0:  # segmentation head skipped: keep the stitching shape
                seg = window.new_zeros((window.shape[0], 1, *spatial))
            prob = torch.sigmoid(logits.float()).reshape(window.shape[0], -1)
            cls_map = prob.reshape(*prob.shape, *([1] * len(spatial))).expand(*prob.shape, *spatial).contiguous()
            return {seg_task: seg, _CLS_MAP: cls_map}

        out = sliding_window_inference(
            inputs,
            self.roi_size,
            self.sw_batch_size,
            predictor,
            self.overlap,
            self.mode,
            sw_device=self.sw_device,
            device=self.device,
        )
        seg, cls_map = out[seg_task], out[_CLS_MAP]
        if self.seg_postprocess is not None:
            seg = self.seg_postprocess(seg)
        dims = tuple(range(2, cls_map.dim()))
        if self.aggregation == "foreground":
            weight = torch.sigmoid(seg.float()).amax(dim=1, keepdim=True)
        else:
            weight = torch.ones_like(cls_map[:, :1])
        total = weight.sum(dim=dims)
        prob = (cls_map * weight).sum(dim=dims) / total.clamp_min(1e-6)
        plain = cls_map.mean(dim=dims)
        prob = torch.where(total > 1e-3, prob, plain)
        return {seg_task: seg, cls_task: torch.logit(prob.clamp(1e-6, 1 - 1e-6))}
