"""SimMIM block masks for masked image modelling."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

__all__ = ["SimMIMMaskd"]


class SimMIMMaskd(Randomizable, MapTransform):
    """Adds a random block mask ``(1, H, W)`` (1 = masked) as ``mask_key``, sized like ``keys``' image.

    ``mask_ratio`` of the ``mask_patch_size`` blocks are masked, as SimMIM's mask generator does. With
    ``deterministic=True`` the same mask (drawn from ``seed``) is used for every sample: for validation.

    Args:
        keys: image key whose spatial size the mask takes (the first key is used).
        mask_key: key of the output mask.
        mask_ratio: fraction of blocks masked, in (0, 1).
        mask_patch_size: block side in pixels; must divide the image size.
        deterministic: one fixed mask for all samples.
        seed: seed for the fixed mask.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mim_mask",
        mask_ratio: float = 0.6,
        mask_patch_size: int = 16,
        deterministic: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(keys)
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}.")
        if mask_patch_size < 1:
            raise ValueError(f"mask_patch_size must be >= 1, got {mask_patch_size}.")
        self.mask_key = mask_key
        self.mask_ratio = mask_ratio
        self.mask_patch_size = mask_patch_size
        self.deterministic = deterministic
        self.seed = seed

    def randomize(self, data=None) -> None:
        pass

    def _mask(self, h: int, w: int, rng: np.random.RandomState) -> np.ndarray:
        s = self.mask_patch_size
        if h % s or w % s:
            raise ValueError(f"image size ({h}, {w}) must be divisible by mask_patch_size {s}.")
        gh, gw = h // s, w // s
        n = gh * gw
        k = int(np.ceil(n * self.mask_ratio))
        flat = np.zeros(n, dtype=np.float32)
        flat[rng.permutation(n)[:k]] = 1.0
        return np.kron(flat.reshape(gh, gw), np.ones((s, s), dtype=np.float32))[None]

    def __call__(self, data: Mapping[Hashable, np.ndarray]) -> dict[Hashable, np.ndarray]:
        d = dict(data)
        img = d[self.keys[0]]
        h, w = int(img.shape[-2]), int(img.shape[-1])
        rng = np.random.RandomState(self.seed) if self.deterministic else self.R
        d[self.mask_key] = self._mask(h, w, rng)
        return d
