"""Shared fixtures: the synthetic data sets and one tiny trained model per bundle, made once per test session
(lazily: a test run that needs none of them makes none) and reused by every module that needs them."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.bundle_cli import log_of, run_bundle
from tests.bundle_specs import spec_of

# the synthetic data sets of the tests: kind -> (generator module, its function, keyword arguments)
SYNTHETIC = {
    # ten BraTS-like cases (32x32x12, four modalities, segmentation, labels.csv with IDH status)
    "brats_like": ("common.data.synthetic", "generate_brats_like", {"n_cases": 10, "shape": (32, 32, 12), "seed": 3}),
    # sixteen fundus photographs (160x176) with disc/cup masks and glaucoma labels
    "fundus_like": ("common.data.synthetic_fundus", "generate_fundus_like",
                    {"n_images": 16, "size": (160, 176), "seed": 3}),
    # photographs of twelve patients (two eyes, 48 px) with a factors.csv of risk factors
    "cmr_fundus_like": ("common.data.synthetic_cmr", "generate_cmr_fundus_like",
                        {"n_patients": 12, "size": 48, "seed": 3}),
}


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Callable[[str], Path]:
    """``synthetic_data(kind)``: the folder of a synthetic data set of :data:`SYNTHETIC`, generated on first use.
    Shared by the whole session: copy it before changing it."""
    folders: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in SYNTHETIC:
            raise ValueError(f"kind must be one of {sorted(SYNTHETIC)}, got {kind!r}.")
        if kind not in folders:
            module, function, kwargs = SYNTHETIC[kind]
            out = tmp_path_factory.mktemp(kind)
            getattr(importlib.import_module(module), function)(out, **kwargs)
            folders[kind] = out
        return folders[kind]

    return get


@pytest.fixture(scope="session")
def brats_like_data(synthetic_data) -> Path:
    return synthetic_data("brats_like")


@pytest.fixture(scope="session")
def fundus_like_data(synthetic_data) -> Path:
    return synthetic_data("fundus_like")


@pytest.fixture(scope="session")
def cmr_fundus_like_data(synthetic_data) -> Path:
    return synthetic_data("cmr_fundus_like")


@pytest.fixture(scope="session")
def bundle_data(synthetic_data) -> Callable[[str], Path]:
    """``bundle_data(bundle)``: the synthetic data set of ``bundle`` (read-only: copy it before changing it)."""
    return lambda bundle: synthetic_data(spec_of(bundle).data)


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory, bundle_data) -> Callable[[str], Path]:
    """``trained_bundle(bundle)``: a bundle root whose ``models/`` holds a tiny model of ``bundle`` trained (once
    per session) on its synthetic data set with the bundle's ``small`` and ``train`` settings (tests/bundle_specs.py).
    Tests may add outputs under the root but must not change its ``models/``."""
    roots: dict[str, Path] = {}

    def trained(bundle: str) -> Path:
        if bundle not in roots:
            spec = spec_of(bundle)
            root = tmp_path_factory.mktemp(f"{bundle}_trained")
            overrides = {"dataset_dir": str(bundle_data(bundle)), "bundle_root": str(root), **spec.small, **spec.train}
            log = log_of(run_bundle(bundle, "train.json", overrides))
            assert f"epoch 1: training tasks {spec.tasks}" in log, log[-3000:]
            roots[bundle] = root
        return roots[bundle]

    return trained


@pytest.fixture
def data_dir(request, bundle_data) -> Path:
    """The synthetic data set of the test module's ``BUNDLE`` (per-bundle test modules; read-only)."""
    return bundle_data(request.module.BUNDLE)


@pytest.fixture
def trained(request, trained_bundle) -> Path:
    """A bundle root with a tiny model of the test module's ``BUNDLE`` trained with its ``small`` and ``train``
    settings (tests/bundle_specs.py); its ``models/`` must not be changed."""
    return trained_bundle(request.module.BUNDLE)
