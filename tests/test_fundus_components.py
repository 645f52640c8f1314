"""Fundus components: disc crop and paste-back, vCDR, vCDR logistic model, datalist checks, two-stage inferer."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged
from PIL import Image
from torch import nn

from common.data import DatasetError, build_fundus_datalist, select_split
from common.data.synthetic_fundus import generate_fundus_like
from common.engines import CooperativeTrainer, MultiTaskTrainer, build_trainer
from common.inferers import DiscCropInferer
from common.losses import MultiTaskLoss
from common.metrics import VCDRMetrics, fit_vcdr_logistic, vertical_cdr
from common.transforms import (
    AdaptiveHistogramEqualized,
    CheckColourImaged,
    DiscCropd,
    crop_box_from_mask,
    crop_square,
    paste_crop,
)
from common.weighting import EqualWeighting


def _disc_image(h: int = 200, w: int = 240, centre=(90, 150), radius=20) -> torch.Tensor:
    rr, cc = np.mgrid[0:h, 0:w]
    return torch.from_numpy(((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2).astype(np.float32))[None]


def test_crop_box_from_mask_centre_and_side():
    mask = torch.zeros(1, 100, 120)
    mask[0, 20:40, 50:60] = 1  # rows 20-39 (20 tall), cols 50-59 (10 wide)
    assert crop_box_from_mask(mask, 2.0) == (30.0, 55.0, 40.0)
    assert crop_box_from_mask(torch.zeros(1, 10, 10), 2.0) is None


def test_crop_then_paste_recovers_the_mask():
    mask = _disc_image()
    box = crop_box_from_mask(mask, 2.0)
    crop = crop_square(mask, box, 64)
    assert crop.shape == (1, 64, 64)
    # the disc (diameter 41 of a side 82 box) fills about pi/16 of the crop
    assert crop.mean().item() == pytest.approx(math.pi / 16, abs=0.03)
    back = paste_crop(crop[None], box, 200, 240, fill=0.0)[0]
    pred, true = back > 0.5, mask > 0.5
    dice = 2 * (pred & true).sum() / (pred.sum() + true.sum())
    assert dice > 0.97
    assert back[0, :40].abs().sum() == 0  # outside the box: fill


def test_crop_near_the_border_pads_with_zeros():
    image = torch.ones(3, 100, 100)
    crop = crop_square(image, (5.0, 50.0, 40.0), 40)
    assert crop[:, :10].abs().max() < 0.2 and crop[:, 25:].min() > 0.99


def test_disc_cropd_jitter_stays_in_range_and_empty_disc_is_an_error():
    mask = _disc_image()
    t = DiscCropd(
        ["image", "disc"], box_key="disc", out_size=32, crop_factor=2.0, centre_jitter=0.1, scale_range=(0.8, 1.25)
    )
    t.set_random_state(0)
    base = crop_box_from_mask(mask, 2.0)
    for _ in range(20):
        out = t({"image": torch.rand(3, 200, 240), "disc": mask.clone(), "case": "a"})
        r, c, side = out["crop_box"].tolist()
        assert out["image"].shape == (3, 32, 32) and out["disc"].shape == (1, 32, 32)
        assert 0.8 * base[2] - 1e-3 <= side <= 1.25 * base[2] + 1e-3
        assert abs(r - base[0]) <= 0.1 * side + 1e-3 and abs(c - base[1]) <= 0.1 * side + 1e-3
    with pytest.raises(ValueError, match="case 'b'.*disc mask 'disc' is empty"):
        t({"image": torch.rand(3, 20, 20), "disc": torch.zeros(1, 20, 20), "case": "b"})


def test_vertical_cdr():
    disc = np.zeros((50, 50), bool)
    cup = np.zeros((50, 50), bool)
    disc[10:30, 5:45] = True  # 20 rows tall, wide: vertical ratio only uses rows
    cup[15:25, 20:22] = True
    assert vertical_cdr(disc, cup) == pytest.approx(0.5)
    assert vertical_cdr(disc, np.zeros_like(cup)) == 0.0
    assert math.isnan(vertical_cdr(np.zeros_like(disc), cup))


def test_vcdr_logistic_fit_orders_by_cdr_and_needs_both_classes():
    records = [{"cdr": c, "glaucoma": int(c > 0.55)} for c in np.linspace(0.3, 0.9, 13)]
    records[3]["glaucoma"], records[9]["glaucoma"] = 1, 0  # overlap, so the fit is finite
    slope, intercept = fit_vcdr_logistic(records, label_key="glaucoma")
    assert slope > 1 and -intercept / slope == pytest.approx(0.6, abs=0.1)
    with pytest.raises(ValueError, match="at least one 'glaucoma' = 0 and one = 1"):
        fit_vcdr_logistic([{"cdr": 0.5, "glaucoma": 1}, {"cdr": 0.7, "glaucoma": 1}], label_key="glaucoma")


def test_vcdr_metrics_count_missing_predictions_as_errors():
    m = VCDRMetrics()
    m.reset()
    m.update(
        {
            "pred": {"vcdr": torch.tensor([0.5, float("nan"), 0.4])},
            "label": {"cdr": torch.tensor([0.6, 0.7, float("nan")])},
        }
    )
    out = m.compute()
    assert out["vcdr_n"] == 2 and out["vcdr_mae"] == pytest.approx((0.1 + 0.7) / 2)


@pytest.fixture(scope="module")
def fundus_dir(tmp_path_factory):
    return generate_fundus_like(tmp_path_factory.mktemp("fundus"), n_images=8, seed=1)


def test_synthetic_fundus_datalist_and_predefined_test_split(fundus_dir):
    records = build_fundus_datalist(fundus_dir, label_column="glaucoma")
    assert len(records) == 8 and {r["split"] for r in records} == {"train", "test"}
    assert all(r["glaucoma"] in (0, 1) and 0 < r["cdr"] < 1 for r in records)
    test = select_split(records, "test", 0.25, 0.25, 0, split_key="split")
    assert {r["case"] for r in test} == {r["case"] for r in records if r["split"] == "test"}
    train = select_split(records, "train", 0.25, 0.25, 0, split_key="split")
    val = select_split(records, "validation", 0.25, 0.25, 0, split_key="split")
    assert len(train) + len(val) == 6 and not {r["case"] for r in train} & {r["case"] for r in val}
    # the measured vertical CDR of the experts' majority masks is close to their mean CDR
    r = records[0]
    disc = np.array(Image.open(r["disc"])) >= 128
    cup = np.array(Image.open(r["cup"])) >= 128
    assert vertical_cdr(disc, cup) == pytest.approx(r["cdr"], abs=0.08)


def _rewrite_labels(folder, case, column, value):
    path = folder / "labels.csv"
    rows = list(csv.reader(path.open()))
    idx = rows[0].index(column)
    for row in rows[1:]:
        if row[0] == case:
            row[idx] = value
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_datalist_errors_name_the_file(fundus_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(fundus_dir, bad)
    (bad / "masks" / "fundus_002_cup.png").unlink()
    with pytest.raises(DatasetError, match=r"case 'fundus_002', file .*fundus_002_cup.png: 'cup' mask is missing"):
        build_fundus_datalist(bad, label_column="glaucoma")
    assert build_fundus_datalist(bad, label_column="glaucoma", require_masks=False)[2]["cup"] is None
    shutil.copy(fundus_dir / "masks" / "fundus_002_cup.png", bad / "masks")
    _rewrite_labels(bad, "fundus_003", "glaucoma", "suspect")
    with pytest.raises(DatasetError, match=r"case 'fundus_003', file .*labels.csv: glaucoma='suspect' is not 1, 0"):
        build_fundus_datalist(bad, label_column="glaucoma")
    _rewrite_labels(bad, "fundus_003", "glaucoma", "1")
    _rewrite_labels(bad, "fundus_004", "cdr_expert2", "1.7")
    with pytest.raises(DatasetError, match=r"cdr_expert2=1.7 is outside \[0, 1\]"):
        build_fundus_datalist(bad, label_column="glaucoma")
    _rewrite_labels(bad, "fundus_004", "cdr_expert2", "0.5")
    (bad / "images" / "fundus_005.jpg").unlink()
    with pytest.raises(DatasetError, match=r"case 'fundus_005'.*listed in the label file but no image"):
        build_fundus_datalist(bad, label_column="glaucoma")
    (bad / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        build_fundus_datalist(bad, label_column="glaucoma", image_dir="empty")


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((150, 160), np.uint8), "is a grayscale image"),
        (np.zeros((150, 160, 4), np.uint8), "has 4 channels"),
        (np.zeros((40, 160, 3), np.uint8), "has sides of .*40 pixels, smaller than the minimum side 64"),
    ],
)
def test_check_colour_image(array, message, tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(array).save(path)
    data = LoadImaged("image", image_only=True, ensure_channel_first=True)({"image": str(path), "case": "x"})
    with pytest.raises(DatasetError, match=f"case 'x', file .*img.png: {message}"):
        CheckColourImaged("image", min_size=64)(data)


def test_check_colour_image_mask_size():
    data = {"image": torch.zeros(3, 100, 120), "disc": torch.zeros(1, 100, 121), "case": "y"}
    with pytest.raises(DatasetError, match="mask 'disc' size 100x121 differs from the image size 100x120"):
        CheckColourImaged("image", mask_keys=["disc"])(data)


class _BlobLocator(nn.Module):
    """Disc logits: +10 inside a fixed blob (in locator coordinates), -10 elsewhere; or -10 everywhere."""

    def __init__(self, size: int, found: bool = True) -> None:
        super().__init__()
        self.size, self.found = size, found
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.full((x.shape[0], 1, self.size, self.size), -10.0)
        if self.found:
            out[:, :, 20:28, 40:48] = 10.0
        return out


class _CropNet(nn.Module):
    """Disc = central half of the crop, cup = central quarter; glaucoma logit 0."""

    def forward(self, x):
        s = x.shape[-1]
        seg = torch.full((x.shape[0], 2, s, s), -10.0)
        seg[:, 0, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4] = 10.0
        seg[:, 1, 3 * s // 8 : 5 * s // 8, 3 * s // 8 : 5 * s // 8] = 10.0
        return {"seg": seg, "glaucoma": torch.zeros(x.shape[0], 1)}


def test_disc_crop_inferer_maps_back_to_full_size_and_fuses_scores():
    inferer = DiscCropInferer(
        _BlobLocator(64),
        cls_task="glaucoma",
        locator_size=64,
        crop_size=32,
        crop_factor=2.0,
        vcdr_logistic=(10.0, -5.0),
    )
    image = torch.rand(1, 3, 128, 192) * 0.5
    image[..., 40:56, 120:144] += 0.5  # a bright disc where the locator puts it (rows 20-27, cols 40-47 of 64)
    out = inferer(image, _CropNet())
    assert out["seg"].shape == (1, 2, 128, 192) and out["disc_found"].tolist() == [1.0]
    r, c, side = out["crop_box"][0].tolist()
    assert (r, c) == pytest.approx((48.0, 132.0)) and side == pytest.approx(2 * max(8 * 2, 8 * 3))
    disc = out["seg"][0, 0] > 0
    assert disc.sum().item() == pytest.approx((side / 2) ** 2, rel=0.1)
    assert out["vcdr"].item() == pytest.approx(0.5, abs=0.05)
    p_vcdr = torch.sigmoid(torch.tensor(10.0 * out["vcdr"].item() - 5.0))
    assert torch.sigmoid(out["glaucoma_fused"]).item() == pytest.approx(((0.5 + p_vcdr) / 2).item(), abs=1e-4)


def test_disc_crop_inferer_flags_images_without_a_disc():
    out = DiscCropInferer(_BlobLocator(64, found=False), cls_task="glaucoma", locator_size=64, crop_size=32)(
        torch.rand(2, 3, 100, 100), _CropNet()
    )
    assert out["disc_found"].tolist() == [0.0, 0.0]
    # a locator that "finds" a disc on a uniform image: implausible (no brighter structure), flagged too
    uniform = torch.full((1, 3, 100, 100), 0.3)
    # (min_fundus_std=0: past the blank-frame test, which would stop a uniform frame before the locator)
    out = DiscCropInferer(_BlobLocator(64), cls_task="glaucoma", locator_size=64, crop_size=32, min_fundus_std=0)(
        uniform, _CropNet()
    )
    assert out["disc_found"].tolist() == [0.0]
    assert torch.equal(out["glaucoma_fused"], out["glaucoma"])  # no vCDR model: the head's score


def test_build_trainer_picks_cooperative_by_argument():
    net = nn.Linear(2, 1)
    kw = dict(
        device="cpu",
        max_epochs=1,
        train_data_loader=[{}],
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), 0.1),
        loss_function=MultiTaskLoss({"a": {"loss": nn.MSELoss(), "target": "a"}}),
        weighting=EqualWeighting(["a"]),
    )
    assert type(build_trainer(None, **kw)) is MultiTaskTrainer
    with pytest.raises(ValueError, match="cooperative must be None or a mapping"):
        build_trainer(0.05, **kw)
    with pytest.raises(ValueError, match="encoder"):  # a CooperativeTrainer checks its network
        build_trainer({"rho": 0.05, "perturb": "features"}, **kw)
    assert issubclass(CooperativeTrainer, MultiTaskTrainer)


def test_disc_crop_inferer_fuses_only_the_trained_sources():
    image = torch.rand(1, 3, 128, 192) * 0.5
    image[..., 40:56, 120:144] += 0.5
    args = dict(locator_size=64, crop_size=32, vcdr_logistic=(10.0, -5.0))
    net = _CropNet()
    seg_only = DiscCropInferer(_BlobLocator(64), cls_task="glaucoma", sources=("vcdr",), **args)(image, net)
    assert torch.equal(seg_only["glaucoma_fused"], seg_only["glaucoma_vcdr"])
    cls_only = DiscCropInferer(_BlobLocator(64), cls_task="glaucoma", sources=("head",), **args)(image, net)
    assert torch.equal(cls_only["glaucoma_fused"], cls_only["glaucoma"])
    with pytest.raises(ValueError, match="sources must name"):
        DiscCropInferer(_BlobLocator(64), cls_task="glaucoma", sources=("cdr",))


def test_clahe_raises_local_contrast_keeps_hue_range_and_meta():
    yy, xx = np.mgrid[0:96, 0:96]
    # a dim, low-contrast photograph: red-orange background with faint darker "vessels" and a brightness ramp
    value = 60 + 20 * (xx / 95) - 8 * (np.abs(yy - 48) < 2)
    img = np.stack([value, value * 0.5, value * 0.2]).astype(np.float32)
    tensor = MetaTensor(torch.from_numpy(img), meta={"filename_or_obj": "photo.png"})
    out = AdaptiveHistogramEqualized("image", clip_limit=0.02)({"image": tensor})["image"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "photo.png" and out.shape == img.shape
    assert 0.0 <= float(out.min()) and float(out.max()) <= 255.0
    vessel, beside = out[0, 47:49, 20:76].mean(), out[0, 52:54, 20:76].mean()
    assert float(beside - vessel) > 3 * 8  # the faint structure is enhanced
    ratio = out[1] / out[0].clamp_min(1e-3)
    assert torch.allclose(ratio[out[0] > 5], torch.tensor(0.5), atol=0.02)  # only the value channel changes
    gray = AdaptiveHistogramEqualized("image")({"image": img[:1]})["image"]
    assert isinstance(gray, np.ndarray) and gray.shape == (1, 96, 96) and gray.dtype == np.float32
    assert AdaptiveHistogramEqualized("image", clip_limit=None)({"image": tensor})["image"] is tensor
    with pytest.raises(ValueError, match="clip_limit"):
        AdaptiveHistogramEqualized("image", clip_limit=2.0)
    with pytest.raises(ValueError, match=r"\(1 or 3, H, W\)"):
        AdaptiveHistogramEqualized("image")({"image": np.zeros((2, 8, 8), np.float32)})
