"""The benchmark machinery: statistics over seeds, multi-task vs single-task comparison rows, the cost measurement on
a real bundle (cmr_fundus on synthetic photographs) and the results page built from CSVs."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import pytest

from benchmarks.cost import measure_strategy, ratio_row
from benchmarks.quality import comparison_rows
from benchmarks.results_page import main as results_page_main
from benchmarks.runner import write_csv
from benchmarks.specs import get_spec
from benchmarks.stats import mean_ci, summarise
from common.data.synthetic_cmr import generate_cmr_fundus_like


def test_mean_ci_student_t():
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert m == pytest.approx(2.0)
    # t(0.975, 2) = 4.303, sd 1, n 3
    assert hi - m == pytest.approx(4.3027 / math.sqrt(3), rel=1e-3)
    assert lo == pytest.approx(2 * m - hi)
    m1, lo1, hi1 = mean_ci([0.5, "", None, float("nan")])
    assert m1 == 0.5 and math.isnan(lo1) and math.isnan(hi1)
    assert all(math.isnan(x) for x in mean_ci([]))
    with pytest.raises(ValueError, match="level"):
        mean_ci([1, 2], level=1.5)


def test_comparison_rows_pair_each_metric_with_its_single_task_model():
    spec = get_spec("glioma_seg_idh")
    records = []
    for seed in range(3):
        records.append({"strategy": "mtl", "train_fraction": 1.0, "dice_mean": 0.8 + 0.01 * seed, "idh_auc": 0.7})
        records.append({"strategy": "stl_seg", "train_fraction": 1.0, "dice_mean": 0.7, "idh_auc": ""})
        records.append({"strategy": "stl_idh", "train_fraction": 1.0, "dice_mean": "", "idh_auc": 0.9})
    rows = comparison_rows(spec, records)
    dice = {r["strategy"]: r for r in rows if r["metric"] == "dice_mean"}
    assert set(dice) == {"mtl", "stl_seg"}
    assert dice["mtl"]["mean"] == pytest.approx(0.81) and dice["mtl"]["n_runs"] == 3
    idh = {r["strategy"]: r for r in rows if r["metric"] == "idh_auc"}
    assert set(idh) == {"mtl", "stl_idh"} and idh["stl_idh"]["mean"] == pytest.approx(0.9)
    summary = summarise(records, ["strategy"], ["dice_mean"])
    assert [s["strategy"] for s in summary] == ["mtl", "stl_seg", "stl_idh"]


@pytest.mark.slow
def test_cost_measurement_on_a_real_bundle(tmp_path):
    data = tmp_path / "cmr"
    generate_cmr_fundus_like(data, n_patients=12, size=64, seed=0)
    spec = get_spec("cmr_fundus")
    overrides = {"image_size": "32", "batch_size": "8"}
    demo_spec = dataclasses.replace(spec, extra_configs=())  # the synthetic set uses the default 15-factor table
    rows = [measure_strategy(demo_spec, s, str(data), overrides, "cpu", steps=2, warmup=1) for s in ("sepl", "stl_age")]
    sepl, single = rows
    assert sepl["tasks"].split()[:2] == ["sex", "age"] and single["tasks"] == "age"
    assert sepl["batch_size"] == 8 and sepl["input_shape"] == "3x32x32"
    assert 0 < single["parameters"] < sepl["parameters"]
    assert sepl["train_step_s"] > 0 and sepl["inference_s"] > 0
    ratio = ratio_row(dataclasses.replace(demo_spec, single_task={"age": "stl_age"}), rows)
    assert ratio["parameters"] == pytest.approx(sepl["parameters"] / single["parameters"])


def test_results_page_from_csvs(tmp_path):
    quality = tmp_path / "quality"
    rows = comparison_rows(
        get_spec("fundus_glaucoma"),
        [
            {"strategy": s, "train_fraction": 1.0, "disc_dice": d, "glaucoma_head_auc": a}
            for s, d, a in [("mtl", 0.93, 0.8), ("mtl", 0.94, 0.7), ("stl_seg", 0.95, ""), ("stl_seg", 0.96, ""),
                            ("stl_cls", "", 0.6), ("stl_cls", "", 0.65)]
        ],
    )  # fmt: skip
    write_csv(rows, quality / "quality.csv")
    affinity = tmp_path / "affinity" / "fundus_glaucoma" / "logs"
    affinity.mkdir(parents=True)
    (affinity / "task_affinity.json").write_text(
        json.dumps({"tasks": ["seg", "glaucoma"], "affinity": [[1e-3, 2e-4], [1e-4, 5e-4]],
                    "gradient_cosine": [[1.0, 0.14], [0.14, 1.0]], "measurements": 50})  # fmt: skip
    )
    out = tmp_path / "docs" / "results.md"
    import sys

    argv = sys.argv
    sys.argv = ["results_page", "--cost", str(tmp_path / "none"), "--quality", str(quality), "--scarcity",
                str(tmp_path / "none"), "--weighting", str(tmp_path / "none"), "--affinity", str(tmp_path / "affinity"),
                "--preamble", str(tmp_path / "none.md"), "--out", str(out)]  # fmt: skip
    try:
        results_page_main()
    finally:
        sys.argv = argv
    page = out.read_text()
    assert "## 2. Quality at equal budget" in page and "## 1. Cost" not in page
    assert "mtl: 0.935" in page and "stl_seg: 0.955" in page and "single-task" in page
    assert "## Task affinity" in page and "0.1400" not in page and "0.140" in page
    assert (out.parent / "results" / "affinity.png").stat().st_size > 0
    assert list(csv.DictReader(open(out.parent / "results" / "quality.csv")))
