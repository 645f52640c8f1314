"""Self-supervised pre-training: :class:`~common.networks.MaskedImageModel` on the project's encoders, the datalist
of unlabelled images, and every bundle's ``pretrain.json`` whose checkpoint ``--pretrained`` then loads."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn

from common.data import build_unlabelled_datalist, select_split
from common.errors import DatasetError, SettingsError
from common.losses import MaskedL1Loss, MaskedMSELoss
from common.networks import (
    MaskedImageModel,
    SePLNet,
    UNetSegClassifier,
    ViTClassifierMIM,
    load_pretrained,
    random_patch_mask,
)
from tests.bundle_cli import bundle_configs, bundle_names, log_of, run_bundle
from tests.bundle_specs import CMR_FACTORS, QUICK

# --- MaskedImageModel ----------------------------------------------------------------------------------------------


def _unet(spatial_dims: int) -> MaskedImageModel:
    net = UNetSegClassifier(2, 1, spatial_dims=spatial_dims, features=(4, 8, 16))
    return MaskedImageModel(net.encoder, 2, spatial_dims, img_size=16)


def _encoders() -> dict[str, tuple[MaskedImageModel, tuple[int, ...]]]:
    """One model per kind of encoder output, with an input shape: feature maps (2-D, 3-D), ViT tokens, pooled."""
    return {
        "unet_2d": (_unet(2), (2, 2, 16, 16)),
        "unet_3d": (_unet(3), (2, 2, 16, 16, 16)),
        "vit": (MaskedImageModel(ViTClassifierMIM(2, 16, 4, 16, 32, 1, 2).encoder, 2, 2, mask_patch_size=8),
                (2, 2, 16, 16)),
        "pooled_resnet": (MaskedImageModel(SePLNet(CMR_FACTORS, encoder_channels=(4, 4, 8, 8)).encoder, 3, 2,
                                           img_size=64), (2, 3, 64, 64)),
    }


def test_random_patch_mask_masks_whole_blocks_at_the_ratio() -> None:
    mask = random_patch_mask(3, (16, 20), 4, 0.6)
    assert mask.shape == (3, 1, 16, 20)
    # 4 x 5 blocks (the last column of blocks is cut at 20 px): ceil(0.6 * 20) = 12 blocks masked per sample
    blocks = mask[:, 0, ::4, ::4]
    assert blocks.shape == (3, 4, 5) and torch.all(blocks.sum(dim=(1, 2)) == 12)
    assert torch.equal(mask, blocks.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None])
    assert random_patch_mask(2, (8, 8, 8), 4, 0.5).shape == (2, 1, 8, 8, 8)


@pytest.mark.parametrize("kind", ["unet_2d", "unet_3d", "vit", "pooled_resnet"])
def test_reconstructs_the_input_shape_from_masked_pixels_only(kind: str) -> None:
    """The reconstruction has the input's shape, and the encoder never sees the masked pixels: changing them
    leaves the output unchanged."""
    model, shape = _encoders()[kind]
    model.eval()
    x = torch.randn(shape)
    mask = model.random_mask(x)
    assert 0.3 < float(mask.mean()) < 0.9
    out = model(x, mask)
    assert out["mim"].shape == x.shape and torch.equal(out["mim_mask"], mask)
    changed = x + 5.0 * mask
    assert torch.allclose(model(changed, mask)["mim"], out["mim"], atol=1e-5)
    assert not torch.allclose(model(x + 5.0 * (1 - mask), mask)["mim"], out["mim"], atol=1e-3)


@pytest.mark.parametrize("loss", [MaskedL1Loss(), MaskedMSELoss()])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 8, 8, 8)])
def test_loss_counts_masked_pixels_only(loss: nn.Module, shape: tuple[int, ...]) -> None:
    target, pred = torch.randn(shape), torch.randn(shape)
    mask = random_patch_mask(shape[0], shape[2:], 4, 0.5)
    base = loss(pred, target, mask)
    assert torch.allclose(loss(pred + 3.0 * (1 - mask), target, mask), base)  # unmasked pixels do not count
    assert not torch.allclose(loss(pred + 3.0 * mask, target, mask), base)
    err = (pred - target).abs() if isinstance(loss, MaskedL1Loss) else (pred - target) ** 2
    assert torch.allclose(base, (err * mask).sum() / (mask.sum() * shape[1]))


@pytest.mark.parametrize("kind", ["unet_2d", "unet_3d", "vit"])
def test_loss_decreases_on_a_tiny_batch(kind: str) -> None:
    torch.manual_seed(0)
    model, shape = _encoders()[kind]
    x = torch.ones(shape) + 0.1 * torch.randn(shape)  # bright images with a little noise: learnable in a few steps
    mask = model.random_mask(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss = model.loss(x, mask)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_encoders_it_cannot_serve_fail_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="encoder .*Sequential.* none of its child modules returns a feature map"):
        MaskedImageModel(nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 4)), 3, 2)
    with pytest.raises(ValueError, match="encoder .*returns dict"):
        MaskedImageModel(_DictEncoder(), 3, 2)
    vit = ViTClassifierMIM(2, 16, 4, 16, 32, 1, 2).encoder
    with pytest.raises(ValueError, match="mask_patch_size .* multiple of the ViT encoder's patch_size"):
        MaskedImageModel(vit, 2, 2, mask_patch_size=6)
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskedImageModel(vit, 2, 2, mask_ratio=1.0)
    with pytest.raises(ValueError, match="input size .* divisible by the encoder's stride"):
        _unet(2)(torch.randn(1, 2, 18, 18))


class _DictEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> dict:
        return {"features": self.conv(x)}


# --- unlabelled datalists ------------------------------------------------------------------------------------------


def _photos(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return [folder / n for n in names]


def test_unlabelled_datalist_keeps_held_out_images_out(tmp_path: Path) -> None:
    train = [{"image": str(p), "case": p.stem, "label": 1} for p in _photos(tmp_path / "data", ["a.png", "b.png"])]
    held = [{"image": str(p), "case": p.stem} for p in _photos(tmp_path / "data", ["c.png"])]
    extra = _photos(tmp_path / "extra", ["d.png", "e.jpg"])
    records = build_unlabelled_datalist(train, [str(tmp_path / "extra"), str(tmp_path / "data")], held_out=held)
    # the data set's own folder given again: its training images are not doubled, its held-out image is left out
    assert sorted(Path(r["image"]).name for r in records) == ["a.png", "b.png", "d.png", "e.jpg"]
    assert all("label" not in r for r in records)
    assert {r["source"] for r in records if Path(r["image"]) in extra} == {str(tmp_path / "extra")}
    _photos(tmp_path / "maps", ["1.png", "1_vessel.png", "2.png"])
    pattern = build_unlabelled_datalist([], str(tmp_path / "maps" / "*[0-9].png"))  # photographs, not label maps
    assert [Path(r["image"]).name for r in pattern] == ["1.png", "2.png"]
    with pytest.raises(DatasetError, match="missing_folder"):
        build_unlabelled_datalist(train, str(tmp_path / "missing_folder"))


# --- every bundle: pretrain.json, then --pretrained ----------------------------------------------------------------


def _parser(bundle: str, configs: list[str], overrides: dict) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(bundle_configs(bundle) / c) for c in configs])
    parser.update(overrides)
    return parser


def _files(records: list[dict], keys: list[str]) -> set[str]:
    out = set()
    for r in records:
        for k in keys:
            v = r.get(k)
            out.update([str(Path(p).resolve()) for p in ([v] if isinstance(v, str) else v or [])])
    return out


@pytest.mark.parametrize("bundle", bundle_names())
def test_pretraining_writes_an_encoder_checkpoint_that_pretrained_loads(
    bundle: str, bundle_data, tmp_path: Path, caplog, monkeypatch
) -> None:
    """pretrain.json pre-trains the bundle's own encoder on the training split's images only (never a validation
    or test image) and writes ``models/pretrained_encoder.pt`` with its settings; train.json with ``--pretrained``
    loads every tensor of it into the encoder, and a network of other sizes fails with the settings quoted."""
    monkeypatch.chdir(bundle_configs(bundle).parents[2])
    # an override like evaluate.json: it repeats no train.json item and runs the pre-training trainer only
    train_items = json.loads((bundle_configs(bundle) / "train.json").read_text())
    pretrain_items = json.loads((bundle_configs(bundle) / "pretrain.json").read_text())
    assert not sorted(k for k in pretrain_items if train_items.get(k, object()) == pretrain_items[k])
    assert pretrain_items["run"] == ["$@pretrain#trainer.run()"]
    assert pretrain_items["pretrain"]["trainer"]["precision"] == "@precision"
    root = tmp_path / "root"
    overrides = {"dataset_dir": str(bundle_data(bundle)), "bundle_root": str(root), **QUICK[bundle]}
    log = log_of(run_bundle(bundle, ["train.json", "pretrain.json"],
                            {**overrides, "pretrain_epochs": 1, "progress_bar": False}))
    assert "epoch 1: training tasks ['mim']" in log and "train_loss_mim" in log, log[-3000:]
    weights = root / "models" / "pretrained_encoder.pt"
    settings = json.loads((root / "models" / "pretrained_encoder_settings.json").read_text())
    assert settings["mask_ratio"] == 0.6 and "mask_patch_size" in settings
    state = torch.load(weights, map_location="cpu", weights_only=True)

    # the images pre-training read: the training split's, none of validation / test (same split as train.json)
    parser = _parser(bundle, ["train.json", "pretrain.json"], overrides)
    used = parser.get_parsed_content("pretrain_datalist")
    keys = ["image"] if "keys=['image']" in parser.get("pretrain_datalist") else parser.get_parsed_content("modalities")
    datalist = parser.get_parsed_content("datalist")
    split_args = {k: parser.get_parsed_content(k) for k in ("val_fraction", "test_fraction", "split_seed", "fold",
                                                            "num_folds")}
    split_key = parser.get_parsed_content("split_key") if "split_key=" in parser.get("pretrain_records") else None

    def files(split: str) -> set[str]:
        records = select_split(datalist, split, split_args["val_fraction"], split_args["test_fraction"],
                               split_args["split_seed"], split_key=split_key, fold=split_args["fold"],
                               num_folds=split_args["num_folds"])
        return _files(records, keys)

    assert _files(used, keys) == files("train")
    assert not _files(used, keys) & (files("validation") | files("test"))
    assert f"pretraining on {len(used)} unlabelled image(s): {len(used)} of the training split" in log

    # train.json --pretrained FILE: every tensor of the encoder loaded, equal to the file's
    train = _parser(bundle, ["train.json"], {**overrides, "pretrained": str(weights)})
    with caplog.at_level(logging.INFO, logger="common.networks.pretrained"):
        network = train.get_parsed_content("network")
    encoder = network.encoder.state_dict()
    assert f"pretrained weights {weights} (state dict) -> encoder: loaded {len(encoder)} tensors, 0 missing" in (
        caplog.text)
    assert set(state) == set(encoder) and all(torch.equal(encoder[k].cpu(), state[k]) for k in state)
    # an encoder of other sizes: the clear SettingsError, quoting the settings the file was written with
    size_key = next(k for k in ("features", "encoder_channels", "hidden_size") if k in settings)
    other = settings[size_key] * 2 if isinstance(settings[size_key], int) else [2 * c for c in settings[size_key]]
    bad = _parser(bundle, ["train.json"], {**overrides, size_key: other}).get_parsed_content("network_def")
    with pytest.raises(SettingsError, match="of another shape.*written with settings"):
        load_pretrained(bad, weights, target="encoder")


def test_an_unreadable_image_in_pretrain_dirs_fails_naming_the_file(bundle_data, tmp_path: Path, monkeypatch) -> None:
    bundle = "cmr_fundus"
    monkeypatch.chdir(bundle_configs(bundle).parents[2])
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(next((bundle_data(bundle) / "images").iterdir()), extra / "good.png")
    (extra / "broken.png").write_bytes(b"not a png")
    overrides = {"dataset_dir": str(bundle_data(bundle)), "bundle_root": str(tmp_path / "root"), **QUICK[bundle],
                 "pretrain_dirs": [str(extra)]}
    parser = _parser(bundle, ["train.json", "pretrain.json"], overrides)
    assert len(parser.get_parsed_content("pretrain_datalist")) == len(parser.get_parsed_content("pretrain_records")) + 2
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("pretrain#dataset")  # caching reads every image, as the run does first
    err: BaseException | None = info.value
    while err is not None and not isinstance(err, DatasetError):
        err = err.__cause__ or err.__context__
    assert err is not None and str(extra / "broken.png") in str(err), info.value
