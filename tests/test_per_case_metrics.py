"""Every bundle's evaluation writes ``per_case.csv``: one row per evaluated sample (case, image or slice) whose values
give back the data set's metrics of ``metrics.json`` (mean Dice / error, pixel-weighted MSE, ROC-AUC from the
per-sample labels and probabilities)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from common.handlers import PER_CASE_FILE, PerCaseMetricsWriter
from common.metrics import BinaryTaskMetrics, SegmentationTaskMetrics, roc_auc
from tests.bundle_cli import bundle_names, evaluate_bundle
from tests.bundle_specs import QUICK


def _read(path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r[key] != "" else math.nan for r in rows])


def check_against_metrics(header: list[str], rows: list[dict], metrics: dict) -> list[str]:
    """Compare every per-sample column with the ``metrics.json`` value it defines; return the keys checked."""
    checked = []
    for key, value in metrics.items():
        if value is None:
            continue
        if key in header and f"{key}_pixels" in header:  # a pixel-weighted error (masked image modelling)
            v, w = _column(rows, key), _column(rows, f"{key}_pixels")
            ok = np.isfinite(v)
            assert np.average(v[ok], weights=w[ok]) == pytest.approx(value, rel=1e-6, abs=1e-9), key
        elif key in header:  # a mean over the samples that have a value (Dice, HD95, errors, accuracies)
            v = _column(rows, key)
            assert np.nanmean(v) == pytest.approx(value, rel=1e-6, abs=1e-9), key
        elif key.endswith("_auc") and f"{key[:-4]}_prob" in header:
            y, p = _column(rows, f"{key[:-4]}_label"), _column(rows, f"{key[:-4]}_prob")
            known = np.isfinite(y)
            assert roc_auc(p[known], y[known]) == pytest.approx(value, rel=1e-6), key
        else:
            continue
        checked.append(key)
    return checked


@pytest.mark.parametrize("bundle", bundle_names())
def test_per_case_csv_matches_metrics_json(bundle, trained_bundle, bundle_data, tmp_path):
    data, out = bundle_data(bundle), tmp_path / "eval"
    metrics = evaluate_bundle(bundle, trained_bundle(bundle), data, out, eval_split="test", **QUICK[bundle])
    header, rows = _read(out / PER_CASE_FILE)
    assert header[0] == "case" and rows
    n_samples = next(metrics[k] for k in ("n_slices", "n_images", "n_cases") if k in metrics)
    assert len(rows) == n_samples
    n_cases = metrics.get("n_cases") or metrics.get("n_patients")
    if n_cases is not None:
        assert len({r["case"] for r in rows}) == n_cases
    id_columns = [k for k in header if not all(_is_number(r[k]) or r[k] == "" for r in rows)]
    id_columns += [k for k in ("slice",) if k in header]  # a slice index is a number
    assert len({tuple(r[k] for k in id_columns) for r in rows}) == len(rows), "a sample is written twice"
    checked = check_against_metrics(header, rows, metrics)
    assert any("auc" in k for k in checked) and len(checked) >= 3, checked
    for key in checked:  # every checked value is a finite number on some sample
        column = key if key in header else f"{key[:-4]}_prob"
        assert np.isfinite(_column(rows, column)).any(), key


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _run(batches: list[dict], writer: PerCaseMetricsWriter, metrics: dict) -> Engine:
    engine = Engine(lambda e, b: b)
    for name, metric in metrics.items():
        metric.attach(engine, name)
    writer.attach(engine)
    engine.run(batches, max_epochs=1)
    return engine


def test_writer_joins_ids_and_metric_details(tmp_path):
    rng = np.random.default_rng(0)
    batches = []
    for b in range(3):
        seg = torch.as_tensor(rng.random((2, 2, 8, 8)) > 0.5).float()
        batches.append(
            {
                "pred": {"seg": (seg * 2 - 1) * torch.as_tensor(rng.random((2, 2, 8, 8)) > 0.2), "cls": torch.randn(2)},
                "label": {"seg": seg, "cls": torch.tensor([b % 2, -1.0 if b == 1 else 1.0]), "case": [f"c{b}", "x"],
                          "slice": torch.tensor([2 * b, 2 * b + 1])},
            }
        )
    seg = SegmentationTaskMetrics("seg", ["disc", "cup"], label_key="seg", spacing_key=None, region_first=True)
    cls = BinaryTaskMetrics("cls", label_key="cls", n_bootstrap=0)
    writer = PerCaseMetricsWriter(str(tmp_path), metric_names=["seg", "cls"], id_keys=["case", "slice"])
    engine = _run(batches, writer, {"seg": seg, "cls": cls})
    rows = engine.state.per_case_metrics
    assert [(r["case"], r["slice"]) for r in rows] == [("c0", 0), ("x", 1), ("c1", 2), ("x", 3), ("c2", 4), ("x", 5)]
    assert np.mean([r["disc_dice"] for r in rows]) == pytest.approx(engine.state.metrics["disc_dice"])
    assert math.isnan(rows[3]["cls_label"]) and math.isnan(rows[3]["cls_accuracy"]) and rows[3]["cls_prob"] > 0
    header, written = _read(tmp_path / PER_CASE_FILE)
    assert header[:2] == ["case", "slice"] and "cup_hd95" in header and len(written) == 6
    assert written[3]["cls_label"] == "" and float(written[0]["disc_dice"]) == rows[0]["disc_dice"]
    with pytest.raises(ValueError, match="metric_names"):
        _run(batches, PerCaseMetricsWriter(str(tmp_path), metric_names=["nope"]), {"seg": seg})
    with pytest.raises(ValueError, match="id_keys"):
        _run(batches, PerCaseMetricsWriter(str(tmp_path), id_keys=["patient"]), {"seg": seg})
    with pytest.raises(ValueError, match="written by another metric"):
        _run(batches, PerCaseMetricsWriter(str(tmp_path)), {"seg": seg, "seg2": SegmentationTaskMetrics(
            "seg", ["disc", "cup"], label_key="seg", spacing_key=None, region_first=True)})
    with pytest.raises(ValueError, match="columns"):
        _run(batches, PerCaseMetricsWriter(str(tmp_path), columns=["dice"]), {"seg": seg})
