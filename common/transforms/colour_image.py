"""Checks of a loaded colour photograph (fundus, dermoscopy, ...) and its masks: one clear error naming the file;
:func:`photo_to_rgb`, a ``PILReader`` converter giving palette, CMYK and opaque RGBA photographs as RGB."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform
from monai.utils import optional_import

from ..errors import case_error
from .case_checks import _filename

PILImage, _ = optional_import("PIL.Image")

__all__ = ["CheckColourImaged", "FrameContrastd", "central_green_std", "photo_to_rgb"]

#: side of the square an image is reduced to before :func:`central_green_std` (speed; JPEG noise averages out).
_STATS_SIZE = 128


def central_green_std(images: torch.Tensor, radius: float = 0.4) -> torch.Tensor:
    """Standard deviation of the green channel inside a central disc, per image: a cheap "is there a fundus
    photograph" statistic (the green channel carries the vessels, disc and macula; a blank, white, black or
    near-uniform frame gives about 0).

    Args:
        images: ``(B, 3, H, W)`` RGB images scaled to [0, 1].
        radius: radius of the central disc relative to the shorter side.

    Returns:
        ``(B,)`` float tensor.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {list(images.shape)}.")
    if not 0.0 < radius <= 0.5:
        raise ValueError(f"radius must be in (0, 0.5], got {radius}.")
    small = F.interpolate(images[:, 1:2].float(), size=(_STATS_SIZE, _STATS_SIZE), mode="area")[:, 0]
    grid = torch.arange(_STATS_SIZE, device=images.device, dtype=torch.float32) - (_STATS_SIZE - 1) / 2
    inside = grid[:, None] ** 2 + grid[None, :] ** 2 <= (radius * _STATS_SIZE) ** 2
    return small[:, inside].std(dim=1)


class FrameContrastd(MapTransform):
    """Store :func:`central_green_std` of a channel-first RGB image under ``name`` (a float): the cheap "is this a
    fundus photograph at all" statistic that a prediction writer compares with a threshold (a blank, white, black
    or near-uniform frame gives about 0). Use it before resizing and padding.

    Args:
        keys: the image key (one).
        name: key of the statistic.
        scale: the image's white value (255 for 8-bit images, 1 for images scaled to [0, 1]).
        radius: radius of the central disc relative to the shorter side.
    """

    def __init__(self, keys: Hashable, name: str = "fundus_std", scale: float = 255.0, radius: float = 0.4) -> None:
        super().__init__(keys)
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}.")
        self.name, self.scale, self.radius = name, float(scale), float(radius)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key]).float()[None] / self.scale
            d[self.name] = float(central_green_std(image, self.radius)[0])
        return d


def _opaque(img: Any) -> bool:
    return img.getchannel("A").getextrema()[0] == 255


def photo_to_rgb(img: Any) -> Any:
    """Give a PIL photograph the mode a colour check expects: a ``PILReader(converter=...)`` for photographs only
    (not masks, whose palette indices are labels).

    - palette (``P``/``PA``): RGB (its colours), or ``L`` where every colour of the palette in use is a grey, so a
      grey palette image is still refused as grayscale; with transparency as RGBA below;
    - ``CMYK``/``YCbCr``/``LAB``/``HSV``: RGB;
    - ``RGBA``/``RGBa``: RGB where the alpha channel is fully opaque (it carries nothing); with transparent pixels
      left as it is, so that :class:`CheckColourImaged` refuses it (no background colour is guessed);
    - ``LA``/``La`` that is fully opaque: ``L`` (refused as grayscale by the check, not as 2 channels);
    - other modes (RGB, L, I;16, ...) unchanged.
    """
    mode = img.mode
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
        rgb = np.asarray(img.convert("RGB"))
        if not has_alpha and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return img.convert("L")
        mode = img.mode
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    if mode in ("RGBA", "RGBa") and _opaque(img):
        return img.convert("RGB")
    if mode in ("LA", "La") and _opaque(img):
        return img.convert("L")
    return img


class CheckColourImaged(MapTransform):
    """Check a colour image loaded by ``LoadImaged(ensure_channel_first=True)`` (channel-first, 2-D) and its masks.

    Checked: the image has exactly 3 channels (grayscale images, and RGBA images with transparent pixels, are refused
    with a hint; read photographs with ``PILReader(converter=common.transforms.photo_to_rgb)`` so that palette, CMYK
    and opaque RGBA files arrive as RGB), each spatial side is at least ``min_size`` pixels, no NaN/inf values; every
    mask key present is one channel of the image's size, and each of ``nonempty_mask_keys`` has a pixel set (a crop
    around the optic disc needs one; checked on loading rather than at the first training crop). The error
    (:class:`~common.errors.DatasetError`) names the case and the file.

    Args:
        keys: image keys.
        mask_keys: keys of masks that must match the image size (checked when present and not None).
        nonempty_mask_keys: keys among ``mask_keys`` whose mask must not be empty.
        min_size: smallest allowed side in pixels.
        case_key: key of the image id used in messages.
        allow_missing_keys: don't raise when an image key is absent.
    """

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable,
        mask_keys: Sequence[Hashable] = (),
        min_size: int = 64,
        nonempty_mask_keys: Sequence[Hashable] = (),
        case_key: str = "case",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if min_size < 1:
            raise ValueError(f"min_size must be >= 1, got {min_size}.")
        self.mask_keys, self.min_size, self.case_key = tuple(mask_keys), int(min_size), case_key
        self.nonempty_mask_keys = tuple(nonempty_mask_keys)
        unknown = [k for k in self.nonempty_mask_keys if k not in self.mask_keys]
        if unknown:
            raise ValueError(f"nonempty_mask_keys {unknown} are not in mask_keys {list(self.mask_keys)}.")

    def _check_image(self, case: str, key: Hashable, img: Any) -> tuple[int, ...]:
        path = _filename(img, str(key))
        shape = tuple(int(s) for s in img.shape)
        if len(shape) != 3:
            raise case_error(case, path, f"expected a 2-D colour image, got array shape {shape} (channel first).")
        channels, spatial = shape[0], shape[1:]
        if channels == 1:
            raise case_error(case, path, "is a grayscale image; a colour (RGB) photograph is required.")
        if channels == 4:
            raise case_error(
                case, path, "has 4 channels (RGBA with transparent pixels, or CMYK); save it as 3-channel RGB."
            )
        if channels == 2:
            raise case_error(
                case, path, "is a grayscale image with transparency; a colour (RGB) photograph is required."
            )
        if channels != 3:
            raise case_error(case, path, f"has {channels} channels; a 3-channel RGB image is required.")
        if min(spatial) < self.min_size:
            raise case_error(
                case,
                path,
                f"has sides of {spatial[0]} and {spatial[1]} pixels, smaller than the minimum side {self.min_size}.",
            )
        data = torch.as_tensor(img)
        if data.is_floating_point() and not bool(torch.isfinite(data).all()):
            raise case_error(case, path, "holds NaN or infinite values.")
        return spatial

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case = str(d.get(self.case_key, "?"))
        spatial = None
        for key in self.key_iterator(d):
            spatial = self._check_image(case, key, d[key])
        for key in self.mask_keys:
            mask = d.get(key)
            if mask is None or spatial is None:
                continue
            path = _filename(mask, str(key))
            shape = tuple(int(s) for s in mask.shape)
            if len(shape) == 3 and shape[0] > 1:
                raise case_error(case, path, f"mask '{key}' has {shape[0]} channels; a one-channel mask is required.")
            if shape[-2:] != spatial:
                raise case_error(
                    case,
                    path,
                    f"mask '{key}' size {shape[-2]}x{shape[-1]} differs from the image size {spatial[0]}x{spatial[1]}.",
                )
            if key in self.nonempty_mask_keys and not bool((torch.as_tensor(mask) > 0).any()):
                raise case_error(case, path, f"mask '{key}' is empty (no pixel set); a '{key}' region is required.")
        return d
