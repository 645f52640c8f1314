"""Parts of the glioma segmentation + IDH bundle: the 2.5-D/3-D U-Net, the sliding-window inferer with case-level
classification, case checks, region targets, label masking, segmentation metrics and class balance."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImaged

from common.data import DatasetError, attach_case_labels
from common.inferers import SegClassSlidingWindowInferer
from common.losses import binary_pos_weight
from common.metrics import SegmentationTaskMetrics, balanced_accuracy
from common.networks import UNetSegClassifier
from common.transforms import CheckMultimodalCased, MaskLabelOutsideForegroundd, SegRegionsd, regions_to_label_map

# --- network -------------------------------------------------------------------------------------------------------


def test_unet_2p5d_folds_slices_and_predicts_each():
    net = UNetSegClassifier(3, 2, 1, slices=3, features=(4, 8, 16), cls_task="idh").eval()
    out = net(torch.randn(2, 3, 32, 24, 3))
    assert out["seg"].shape == (2, 2, 32, 24, 3) and out["idh"].shape == (2, 1)
    # the slices are not predicted identically: the block's slice axis is resolved by the decoder
    assert not torch.allclose(out["seg"][..., 0], out["seg"][..., 1])
    with pytest.raises(ValueError, match="2.5-D input"):
        net(torch.randn(1, 3, 32, 32, 4))


def test_unet_3d_2d_and_skipped_heads():
    net3 = UNetSegClassifier(2, 1, 2, spatial_dims=3, features=(4, 8))
    out = net3(torch.randn(1, 2, 16, 16, 8))
    assert out["seg"].shape == (1, 1, 16, 16, 8) and out["cls"].shape == (1, 2)
    net2 = UNetSegClassifier(1, 3, 1, spatial_dims=2, features=(4, 8))
    out = net2(torch.randn(2, 1, 16, 16), segment=False)
    assert out["seg"].numel() == 0 and out["cls"].shape == (2, 1)
    out = net2(torch.randn(2, 1, 16, 16), classify=False)
    assert out["cls"].numel() == 0 and out["seg"].shape == (2, 3, 16, 16)


def test_unet_parameter_groups_and_torchscript():
    net = UNetSegClassifier(3, 1, 1, slices=3, features=(4, 8, 16), cls_task="idh").eval()
    shared = {id(p) for p in net.shared_parameters()}
    assert shared.isdisjoint(id(p) for p in net.task_parameters("seg"))
    assert shared.isdisjoint(id(p) for p in net.task_parameters("idh"))
    scripted = torch.jit.script(net)
    x = torch.randn(1, 3, 16, 16, 3)
    assert torch.allclose(scripted(x)["seg"], net(x)["seg"], atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"spatial_dims": 3, "slices": 3}, "slices"),
        ({"in_channels": 0}, "in_channels"),
        ({"features": (8,)}, "features"),
        ({"seg_task": "x", "cls_task": "x"}, "differ"),
    ],
)
def test_unet_argument_checks(kwargs, word):
    args = dict(in_channels=1, seg_channels=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=word):
        UNetSegClassifier(**args)


# --- inferer -------------------------------------------------------------------------------------------------------


class _Toy(torch.nn.Module):
    """Segments channel 0 > 0; the window's class logit is the mean of channel 1 over the window."""

    def forward(self, x, segment: bool = True, classify: bool = True):
        return {"seg": 20 * (x[:, :1] - 0.5), "cls": x[:, 1].mean(dim=(1, 2, 3)).unsqueeze(1)}


def test_sliding_window_covers_large_volume_and_weights_class_by_foreground():
    x = torch.zeros(1, 2, 64, 40, 9)
    x[:, 0, :16] = 1.0  # tumour in the first 16 rows
    x[:, 1, :16] = 4.0  # windows over the tumour say "positive"
    x[:, 1, 16:] = -4.0  # windows elsewhere say "negative"
    kw = dict(roi_size=(16, 16, 3), sw_batch_size=8, overlap=(0.5, 0.5, 2 / 3))
    fg = SegClassSlidingWindowInferer(**kw, aggregation="foreground")(x, _Toy())
    assert fg["seg"].shape == (1, 1, 64, 40, 9)  # whole volume, larger than the window, not cropped
    assert torch.equal(fg["seg"] > 0, x[:, :1] > 0.5)
    mean = SegClassSlidingWindowInferer(**kw, aggregation="mean")(x, _Toy())
    p_fg, p_mean = torch.sigmoid(fg["cls"]).item(), torch.sigmoid(mean["cls"]).item()
    assert p_fg > 0.8 and p_mean < 0.5
    none = SegClassSlidingWindowInferer(**kw)(torch.zeros(1, 2, 16, 16, 3), _Toy())  # no foreground: plain mean
    assert abs(torch.sigmoid(none["cls"]).item() - 0.5) < 1e-4
    with pytest.raises(ValueError, match="aggregation"):
        SegClassSlidingWindowInferer(roi_size=(8, 8, 3), aggregation="max")


# --- case checks ---------------------------------------------------------------------------------------------------


def _write(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> str:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return str(path)


def _case(tmp_path: Path, **changes) -> dict:
    rng = np.random.default_rng(0)
    shape = (8, 8, 4)
    files = {"case": "c1"}
    for m in ("t1", "flair"):
        data = changes.get(m, rng.random(shape, dtype=np.float32))
        files[m] = _write(tmp_path / f"c1_{m}.nii.gz", data, changes.get(f"{m}_affine"))
    seg = changes.get("seg", np.zeros(shape, np.uint8))
    files["seg"] = _write(tmp_path / "c1_seg.nii.gz", seg)
    return LoadImaged(keys=["t1", "flair", "seg"], image_only=True, ensure_channel_first=True)(files)


def test_case_checks_pass_and_name_case_and_file(tmp_path: Path):
    check = CheckMultimodalCased(["t1", "flair"], label_key="seg", label_values=[0, 1])
    check(_case(tmp_path))
    with pytest.raises(DatasetError, match=r"case 'c1', file .*c1_flair.nii.gz: modality 'flair' shape \(8, 8, 5\)"):
        check(_case(tmp_path, flair=np.zeros((8, 8, 5), np.float32)))
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    with pytest.raises(DatasetError, match=r"c1_flair.nii.gz: modality 'flair' orientation LAS differs"):
        check(_case(tmp_path, flair_affine=flipped))
    shifted = np.eye(4)
    shifted[:3, 3] = 5.0
    with pytest.raises(DatasetError, match="voxel grid"):
        check(_case(tmp_path, flair_affine=shifted))
    nan = np.ones((8, 8, 4), np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(DatasetError, match=r"c1_t1.nii.gz: holds 1 NaN"):
        check(_case(tmp_path, t1=nan))
    seg = np.zeros((8, 8, 4), np.uint8)
    seg[1, 1, 1] = 255
    with pytest.raises(DatasetError, match=r"c1_seg.nii.gz: segmentation labels \[255\] are outside"):
        check(_case(tmp_path, seg=seg))
    with pytest.raises(DatasetError, match="segmentation shape"):
        check(_case(tmp_path, seg=np.zeros((8, 8, 3), np.uint8)))


# --- regions, label masking ------------------------------------------------------------------------------------------


def test_seg_regions_and_label_map():
    labels = torch.tensor([0, 1, 2, 3, 4]).view(1, 5, 1, 1).float()
    regions = {"wt": [1, 2, 3, 4], "tc": [1, 3, 4], "et": [4]}
    out = SegRegionsd("seg", regions)({"seg": labels})["seg"]
    assert out.shape == (3, 5, 1, 1)
    assert out[:, :, 0, 0].tolist() == [[0, 1, 1, 1, 1], [0, 1, 0, 1, 1], [0, 0, 0, 0, 1]]
    assert regions_to_label_map(out)[:, 0, 0].tolist() == [0, 2, 1, 2, 3]
    with pytest.raises(ValueError, match="positive"):
        SegRegionsd("seg", {"bad": [0]})


def test_mask_label_outside_foreground():
    t = MaskLabelOutsideForegroundd("idh", seg_key="seg", min_voxels=2)
    seg = torch.zeros(1, 4, 4, 3)
    assert t({"idh": torch.tensor(1), "seg": seg})["idh"].item() == -1
    seg[0, 0, 0, 0] = seg[0, 1, 0, 0] = 1
    assert t({"idh": torch.tensor(1), "seg": seg})["idh"].item() == 1


# --- metrics, class balance, labels ----------------------------------------------------------------------------------


def _engine_output(pred: torch.Tensor, label: torch.Tensor, spacing=None) -> dict:
    targets = {"seg": label}
    if spacing is not None:
        targets["spacing"] = spacing
    return {"pred": {"seg": pred}, "label": targets}


def test_segmentation_metrics_per_case_and_region():
    label = torch.zeros(2, 2, 16, 16, 4)
    label[0, :, 4:8, 4:8, 1:3] = 1
    pred = torch.where(label > 0, 10.0, -10.0)
    metric = SegmentationTaskMetrics("seg", ["wt", "et"], label_key="seg")
    metric.reset()
    metric.update(_engine_output(pred, label))
    out = metric.compute()
    # case 2 has empty ground truth and an empty prediction: Dice 1, HD95 undefined
    assert out["dice_mean"] == pytest.approx(1.0) and out["hd95_mean"] == pytest.approx(0.0)
    assert out["hd95_undefined"] == 2 and out["n_cases"] == 2
    shifted = torch.roll(pred, shifts=2, dims=2)
    metric.reset()
    metric.update(_engine_output(shifted[:1], label[:1], spacing=torch.tensor([[1.0, 1.0, 1.0]])))
    one = metric.compute()
    metric.reset()
    metric.update(_engine_output(shifted[:1], label[:1], spacing=torch.tensor([[3.0, 3.0, 3.0]])))
    three = metric.compute()
    assert 0 < one["dice_wt"] < 1 and three["hd95_wt"] == pytest.approx(3 * one["hd95_wt"])
    assert set(SegmentationTaskMetrics("seg", ["a"], prefix="val").compute()) >= {"val_dice_mean", "val_n_cases"}


def test_binary_pos_weight_and_balanced_accuracy():
    assert binary_pos_weight([1, 1, 1, 0, -1]).item() == pytest.approx(1 / 3)
    assert binary_pos_weight([1, 1]).item() == 1.0
    with pytest.raises(ValueError, match="labels"):
        binary_pos_weight([2])
    assert balanced_accuracy(np.array([1, 1, 1, 0]), np.array([1, 1, 1, 1])) != balanced_accuracy(
        np.array([1, 1, 1, 0]), np.array([1, 1, 0, 0])
    )
    assert balanced_accuracy(np.array([1, 1, 1, 1]), np.array([1, 1, 1, 0])) == pytest.approx(0.5)


def test_attach_case_labels(tmp_path: Path):
    datalist = [{"case": "a"}, {"case": "b"}, {"case": "c"}]
    mapping = {"mutant": 1, "wildtype": 0, "unknown": -1, "": -1}
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["patient", "idh_status"], ["a", "mutant"], ["b", "wildtype"]])
    out = attach_case_labels(datalist, path, "idh_status", mapping, key="idh")
    assert [r["idh"] for r in out] == [1, 0, -1] and "idh" not in datalist[0]
    assert [
        r["idh"] for r in attach_case_labels(datalist, tmp_path / "none.csv", "idh_status", mapping, key="idh")
    ] == [-1] * 3
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow(["c", "IDH1-R132H"])
    with pytest.raises(
        DatasetError, match=r"case 'c', file .*labels.csv: row 4: idh_status='IDH1-R132H' is not one of"
    ):
        attach_case_labels(datalist, path, "idh_status", mapping, key="idh")


def _two_blobs() -> torch.Tensor:
    """Logits (1, 1, 12, 12, 4): a large blob of modest confidence and a small one the network is surer of."""
    logits = torch.full((1, 1, 12, 12, 4), -5.0)
    logits[0, 0, 0:6, 0:6, :] = 1.0  # 144 voxels, peak logit 1
    logits[0, 0, 9:11, 9:11, 1:3] = 4.0  # 8 voxels, peak logit 4
    return logits


def test_keep_one_component_peak_and_size():
    from common.transforms import KeepOneComponentLogits, keep_largest_component_logits

    logits = _two_blobs()
    peak = KeepOneComponentLogits("peak")(logits)
    assert (peak[0, 0, 9:11, 9:11, 1:3] == 4.0).all() and (peak[0, 0, 0:6, 0:6] == -20.0).all()
    size = KeepOneComponentLogits("size")(logits)
    assert (size[0, 0, 0:6, 0:6] == 1.0).all() and (size[0, 0, 9:11, 9:11, 1:3] == -20.0).all()
    assert torch.equal(keep_largest_component_logits(logits), size)
    # voxels below the threshold are untouched; an empty mask is returned as it is
    assert (peak[logits < 0] == logits[logits < 0]).all()
    empty = torch.full((2, 3, 4, 4, 2), -3.0)
    assert torch.equal(KeepOneComponentLogits()(empty), empty)
    # diagonal neighbours are one component (full connectivity, as MONAI's KeepLargestConnectedComponent)
    diagonal = torch.full((1, 1, 4, 4, 1), -5.0)
    diagonal[0, 0, 0, 0, 0], diagonal[0, 0, 1, 1, 0] = 2.0, 3.0
    assert torch.equal(KeepOneComponentLogits("size")(diagonal), diagonal)
    with pytest.raises(ValueError, match="rank"):
        KeepOneComponentLogits("mean")
    with pytest.raises(ValueError, match="threshold"):
        KeepOneComponentLogits("peak", threshold=1.5)
