"""The embedded demo data sets: generated on first use where a bundle's default ``dataset_dir`` is absent."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

__all__ = ["ensure_demo_data"]

logger = logging.getLogger(__name__)


def ensure_demo_data(dataset_dir: str, demo_dir: str, generate: Callable[..., Any], **kwargs: Any) -> str:
    """Return ``dataset_dir``, first generating the demo data set there when it is the default one and absent.

    A bundle's ``train.json`` defaults ``dataset_dir`` to its embedded synthetic set (e.g. ``data/brats_demo``), so
    ``python -m monai.bundle run --config_file bundles/<name>/configs/train.json`` works on a fresh checkout. Any
    other ``dataset_dir`` (a user's own data) is never generated: a missing folder stays an error of the data
    loader, which names it.

    Args:
        dataset_dir: the run's data set folder (``--dataset_dir``).
        demo_dir: the bundle's default data set folder.
        generate: the generator, called as ``generate(demo_dir, **kwargs)`` (e.g.
            ``common.data.generate_brats_like``).
        kwargs: the generator's settings (e.g. ``n_cases=24, seed=0``).
    """
    same = os.path.abspath(str(dataset_dir)) == os.path.abspath(str(demo_dir))
    if same and not os.path.exists(str(dataset_dir)):
        logger.warning(
            f"dataset_dir '{dataset_dir}' (the bundle's default, the embedded demo data set) is absent: generating it "
            f"with {getattr(generate, '__name__', generate)}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}). "
            "Give --dataset_dir to train on your own data."
        )
        generate(str(dataset_dir), **kwargs)
    return str(dataset_dir)
