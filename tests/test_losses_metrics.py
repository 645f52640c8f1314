"""Multi-task loss with missing labels, masked reconstruction loss, per-task metrics and bootstrap CIs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from common.losses import MaskedMSELoss, MultiTaskLoss, valid_sample_mask
from common.metrics import BinaryTaskMetrics, MaskedMSE, SampleCounts, case_bootstrap_ci, roc_auc


def make_loss() -> MultiTaskLoss:
    return MultiTaskLoss(
        {
            "cls": {"loss": nn.BCEWithLogitsLoss(), "target": "label", "missing_value": -1},
            "reg": {"loss": nn.L1Loss(), "target": "value", "missing_value": float("nan")},
        }
    )


def test_valid_sample_mask():
    assert valid_sample_mask(torch.tensor([1, -1, 0]), -1).tolist() == [True, False, True]
    assert valid_sample_mask(torch.tensor([1.0, float("nan")]), float("nan")).tolist() == [True, False]
    assert valid_sample_mask(torch.tensor([1.0, 2.0]), None).tolist() == [True, True]


def test_missing_labels_are_skipped_and_other_tasks_still_learn():
    loss = make_loss()
    preds = {
        "cls": torch.tensor([[2.0], [-3.0], [0.5]], requires_grad=True),
        "reg": torch.tensor([[1.0], [2.0], [3.0]], requires_grad=True),
    }
    targets = {"label": torch.tensor([1, -1, 0]), "value": torch.tensor([float("nan"), 2.5, float("nan")])}
    out = loss(preds, targets)
    expected_cls = nn.functional.binary_cross_entropy_with_logits(torch.tensor([2.0, 0.5]), torch.tensor([1.0, 0.0]))
    assert math.isclose(float(out["cls"].detach()), float(expected_cls), rel_tol=1e-6)
    assert math.isclose(float(out["reg"].detach()), 0.5, rel_tol=1e-6)
    sum(out.values()).backward()
    # sample 1 has no cls label: no cls gradient; samples 0 and 2 have no reg label: no reg gradient
    assert preds["cls"].grad[1].abs().item() == 0 and preds["cls"].grad[0].abs().item() > 0
    assert preds["reg"].grad[0].abs().item() == 0 and preds["reg"].grad[1].abs().item() > 0


def test_task_without_any_label_is_absent_and_active_tasks_filter():
    loss = make_loss()
    preds = {"cls": torch.zeros(2, 1), "reg": torch.zeros(2, 1)}
    targets = {"label": torch.tensor([-1, -1]), "value": torch.tensor([1.0, 2.0])}
    assert set(loss(preds, targets)) == {"reg"}
    targets = {"label": torch.tensor([1, 0]), "value": torch.tensor([1.0, 2.0])}
    assert set(loss(preds, targets, tasks=["cls"])) == {"cls"}


def test_multitask_loss_errors():
    with pytest.raises(ValueError, match="tasks"):
        MultiTaskLoss({})
    with pytest.raises(ValueError, match="loss"):
        MultiTaskLoss({"a": {"target": "x"}})
    with pytest.raises(ValueError, match="targets has no"):
        make_loss()({"cls": torch.zeros(1, 1), "reg": torch.zeros(1, 1)}, {"label": torch.tensor([1])})


def test_masked_mse_counts_masked_pixels_only():
    pred, target = torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4)
    target[..., :2, :] = 1.0  # error 1 in the top half
    mask = torch.zeros(1, 1, 4, 4)
    assert float(MaskedMSELoss()(pred, target, mask + 1)) == pytest.approx(0.5)
    mask[..., :2, :] = 1
    assert float(MaskedMSELoss()(pred, target, mask)) == pytest.approx(1.0)
    mask = 1 - mask
    assert float(MaskedMSELoss()(pred, target, mask)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="shape"):
        MaskedMSELoss()(pred, target[:, :1])


def test_roc_auc_and_case_bootstrap():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 200)
    p = np.concatenate([rng.normal(0, 1, 200), rng.normal(1.5, 1, 200)])
    auc = roc_auc(p, y)
    assert 0.8 < auc < 0.9
    cases = [f"c{i // 10}" for i in range(400)]
    lo, hi = case_bootstrap_ci(roc_auc, p, y, cases, n_bootstrap=200)
    assert lo < auc < hi
    lo_s, hi_s = case_bootstrap_ci(roc_auc, p, y, None, n_bootstrap=200)
    assert lo_s < auc < hi_s
    assert math.isnan(roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))
    # no labelled sample (a data set without the label) or one class only: undefined, not a crash
    assert all(math.isnan(v) for v in case_bootstrap_ci(roc_auc, np.zeros(0), np.zeros(0), [], n_bootstrap=10))
    assert all(math.isnan(v) for v in case_bootstrap_ci(roc_auc, np.ones(3), np.ones(3), None, n_bootstrap=10))


def test_case_bootstrap_is_wider_for_correlated_slices():
    """Slices of one case share the case's score offset: resampling cases must give a wider CI than slices."""
    rng = np.random.default_rng(1)
    n_cases, per_case = 20, 30
    offsets = rng.normal(0, 1.5, n_cases)
    y = np.tile(np.repeat([0, 1], per_case // 2), n_cases)
    cases = np.repeat(np.arange(n_cases), per_case)
    p = offsets[cases] + y * 1.0 + rng.normal(0, 0.3, len(y))
    lo_c, hi_c = case_bootstrap_ci(roc_auc, p, y, cases, n_bootstrap=300)
    lo_s, hi_s = case_bootstrap_ci(roc_auc, p, y, None, n_bootstrap=300)
    assert hi_c - lo_c > 1.5 * (hi_s - lo_s)


def test_binary_task_metrics_skip_unknown_labels():
    m = BinaryTaskMetrics("cls", prefix="cls", n_bootstrap=50)
    m.reset()
    m.update({"pred": {"cls": torch.tensor([[3.0], [-3.0], [2.0], [0.1]])},
              "label": {"label": torch.tensor([1, 0, -1, 0]), "case": ["a", "a", "b", "b"]}})
    m.update({"pred": {"cls": torch.tensor([[1.0], [-1.0]])},
              "label": {"label": torch.tensor([1, 0]), "case": ["c", "c"]}})
    out = m.compute()
    assert out["cls_n"] == 5
    assert out["cls_auc"] == pytest.approx(1.0)
    assert out["cls_accuracy"] == pytest.approx(4 / 5)  # logit 0.1 -> p 0.525 >= 0.5 predicted 1, label 0
    assert {"cls_auc_ci_low", "cls_auc_ci_high"} <= set(out)


def test_masked_mse_metric_and_counts():
    m = MaskedMSE("mim", "image", "mim_mask")
    m.reset()
    pred = torch.zeros(2, 1, 2, 2)
    img = torch.ones(2, 1, 2, 2)
    mask = torch.tensor([[[[1, 0], [0, 0]]], [[[1, 1], [0, 0]]]], dtype=torch.float32)
    m.update({"pred": {"mim": pred}, "label": {"image": img, "mim_mask": mask}})
    assert m.compute() == pytest.approx(1.0)
    c = SampleCounts()
    c.reset()
    c.update({"label": {"case": ["a", "a", "b"]}})
    assert c.compute() == {"n_slices": 3, "n_cases": 2}
