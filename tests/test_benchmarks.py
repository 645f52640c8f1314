"""The benchmark machinery: statistics over seeds, multi-task vs single-task comparison rows, the cost measurement on
a real bundle (cmr_fundus on synthetic photographs), training throughput per strategy phase (brats_mtl), a strategy
comparison run with per-strategy overrides and the inference time of its model (glioma_seg_idh, both on synthetic
volumes), and the results page built from CSVs."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import pytest

from benchmarks.cost import engine_seconds, measure_inference_time, measure_strategy, measure_throughput, ratio_row
from benchmarks.quality import build_parser, comparison_rows, parse_strategy_overrides, run_benchmark, runs_table
from benchmarks.results_page import main as results_page_main
from benchmarks.results_page import speed_section
from benchmarks.runner import collect, write_csv
from benchmarks.specs import get_spec
from benchmarks.speed import measure_speed, plot_speed
from benchmarks.stats import mean_ci, summarise
from common.data import generate_brats_like
from common.data.synthetic_cmr import generate_cmr_fundus_like

# tiny networks so a CPU epoch takes seconds (the sizes of the bundles' own tests)
BRATS_SMALL = {"image_size": "32", "patch_size": "8", "hidden_size": "32", "num_layers": "2", "num_heads": "2",
               "mask_patch_size": "8", "batch_size": "8"}  # fmt: skip
GLIOMA_SMALL = {"features": "[4,8,16]", "patch_size": "16", "samples_per_case": "2", "batch_size": "4",
                "sw_batch_size": "16"}  # fmt: skip


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


def test_speed_switches_measured_against_fp32(tmp_path):
    data = tmp_path / "cmr"
    generate_cmr_fundus_like(data, n_patients=12, size=64, seed=0)
    spec = dataclasses.replace(get_spec("cmr_fundus"), extra_configs=())  # the synthetic set's default factor table
    overrides = {"image_size": "32", "batch_size": "4"}
    variants = ["fp32", "bf16", "channels_last", "ema", "fp16"]
    rows = measure_speed(spec, str(data), variants, overrides, "cpu", steps=2, warmup=1)
    assert [r["variant"] for r in rows] == ["fp32", "bf16", "channels_last", "ema"]  # fp16 needs CUDA: skipped
    fp32, bf16 = rows[0], rows[1]
    assert fp32["train_speedup"] == fp32["inference_speedup"] == 1.0 and bf16["precision"] == "bf16"
    assert fp32["batch_size"] == 4 and fp32["input_shape"] == "3x32x32"
    for r in rows:
        assert r["train_step_s"] > 0 and r["inference_s_per_case"] > 0
        assert r["train_speedup"] == pytest.approx(fp32["train_step_s"] / r["train_step_s"], rel=1e-2)
    with pytest.raises(ValueError, match="variant"):
        measure_speed(spec, str(data), ["fp64"], overrides, "cpu", steps=1, warmup=0)
    out = tmp_path / "speed"
    write_csv(rows, out / "speed.csv")
    plot_speed(rows, out / "speed.png")
    assert (out / "speed.png").stat().st_size > 0
    page = "\n".join(speed_section(out, tmp_path / "assets"))
    assert "## Speed switches" in page and "| cmr_fundus | bf16 |" in page and "benchmarks.speed" in page
    assert (tmp_path / "assets" / "speed.csv").exists()


def test_strategies_beyond_the_compared_ones():
    spec = get_spec("brats_mtl")
    assert spec.strategy_overrides("pretrain_finetune") == {"strategy": "pretrain_finetune"}
    assert "pretrain_finetune" not in spec.strategies  # run only when named, never by default
    stl_idh = get_spec("glioma_seg_idh").strategy_overrides("stl_idh")
    assert stl_idh == {"strategy": "stl_idh", "idh_aggregation": "mean"}
    with pytest.raises(ValueError, match="strategy must be one of"):
        spec.strategy_overrides("cool")
    assert parse_strategy_overrides(["cool:epochs=50", "cool:val_interval=10", "mtl:lr=1e-3"]) == {
        "cool": {"epochs": "50", "val_interval": "10"},
        "mtl": {"lr": "1e-3"},
    }
    for bad in (["epochs=50"], ["cool:epochs"], [":epochs=5"]):
        with pytest.raises(SystemExit):
            parse_strategy_overrides(bad)


def test_runs_table_with_intervals_counts_and_tags():
    records = [
        {"strategy": "mtl", "tag": "", "train_fraction": 0.25, "seed": 0, "cls_auc": 0.9661, "cls_auc_ci_low": 0.935,
         "cls_auc_ci_high": 0.983, "n_cases": 13, "mim_mse": None, "train_minutes": 31.5, "eval_seconds_per_case": 2.1},
        {"strategy": "cool", "tag": "epochs50", "train_fraction": 1.0, "seed": 1, "cls_auc": float("nan")},
    ]  # fmt: skip
    lines = runs_table(records, ["cls_auc", "n_cases", "mim_mse"]).splitlines()
    head = "| strategy | training cases | seed | cls_auc | n_cases | mim_mse | train min | evaluate s/case |"
    assert lines[0] == head
    assert lines[2] == "| mtl | 25% | 0 | 0.966 [0.935, 0.983] | 13 | n/a | 31.5 | 2.1 |"
    assert lines[3].startswith("| cool (epochs50) | 100% | 1 | n/a | n/a | n/a |")


def test_engine_seconds_sums_every_engine_run():
    log = (
        "2026-11-23 10:00:00,000 - ignite.engine.engine.SupervisedEvaluator - INFO - Engine run finished. "
        "Time taken: 00:00:31.600\n... Engine run finished. Time taken: 01:02:03.5\n"
    )
    assert engine_seconds(log) == pytest.approx(31.6 + 3723.5)
    assert math.isnan(engine_seconds("no engine ran"))


@pytest.mark.slow
def test_throughput_of_every_strategy_phase(tmp_path):
    """brats_mtl's pretrain_finetune is timed per phase: MIM alone, then the classifier alone."""
    data = tmp_path / "brats"
    generate_brats_like(data, n_cases=10, shape=(32, 32, 12), seed=3)
    rows = measure_throughput(get_spec("brats_mtl"), ["stl", "pretrain_finetune"], str(data), BRATS_SMALL, "cpu", 2, 1)
    assert [(r["strategy"], r["phase"], r["tasks"]) for r in rows] == [
        ("stl", "1/1", "cls"),
        ("pretrain_finetune", "1/2", "mim"),
        ("pretrain_finetune", "2/2", "cls"),
    ]
    for r in rows:
        assert r["batch_size"] == 8 and r["input_shape"] == "2x32x32" and r["reference"] == "stl"
        assert r["samples_per_s"] == pytest.approx(8 / r["median_step_s"], rel=0.05)
    assert rows[0]["step_time_ratio"] == 1.0
    assert rows[2]["parameters"] == rows[0]["parameters"] < rows[1]["parameters"]  # the MIM decoder trains alone
    with pytest.raises(ValueError, match="phase must index"):
        measure_strategy(get_spec("brats_mtl"), "stl", str(data), BRATS_SMALL, "cpu", 1, 0, phase=1)


@pytest.mark.slow
def test_strategy_run_with_its_own_overrides_then_inference_time(tmp_path):
    """One tiny glioma_seg_idh run through the CLI with a per-strategy override, its markdown row, then the deployed
    inference.json timed on the test cases of the same split."""
    data = tmp_path / "brats"
    generate_brats_like(data, n_cases=10, shape=(32, 32, 12), seed=5)
    out = tmp_path / "quality"
    small = [f"{k}={v}" for k, v in GLIOMA_SMALL.items()]
    args = build_parser("", [1.0], str(out)).parse_args(
        ["--bundles", "glioma_seg_idh", "--dataset_dir", str(data), "--strategies", "mtl", "--seeds", "0",
         "--out", str(out), "--tag", "tiny", "--override", "epochs=1", *small,
         "--strategy_override", "mtl:val_interval=1"]
    )  # fmt: skip
    run_benchmark(args, "quality")
    (record,) = collect(out / "glioma_seg_idh")
    assert record["strategy"] == "mtl" and record["tag"] == "tiny" and "val_interval=1" in record["overrides"]
    with open(out / "quality_runs.csv") as f:
        assert next(csv.DictReader(f))["dice_mean"] != ""
    line = runs_table([record], ["n_cases"]).splitlines()[2]
    assert line.startswith(f"| mtl (tiny) | 100% | 0 | {record['n_cases']} |")
    run = out / "glioma_seg_idh" / "mtl_frac1_seed0_tiny"
    inference_overrides = {k: GLIOMA_SMALL[k] for k in ("features", "patch_size", "sw_batch_size")}
    row = measure_inference_time(
        get_spec("glioma_seg_idh"), str(data), str(run), "test", inference_overrides, tmp_path / "inference.log"
    )
    assert row["n_cases"] == row["n_inputs"] == record["n_cases"] > 0  # the same test cases as evaluate.json's
    assert row["engine_seconds"] > 0 and row["command_wall_seconds"] > row["engine_seconds"]
    assert row["seconds_per_case"] == pytest.approx(row["engine_seconds"] / row["n_cases"], abs=0.01)
    with pytest.raises(ValueError, match="bundle_root"):
        measure_inference_time(get_spec("glioma_seg_idh"), str(data), str(tmp_path), "test", {}, tmp_path / "x.log")


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
    sys.argv = ["results_page", "--cost", str(tmp_path / "none"), "--speed", str(tmp_path / "none"),
                "--quality", str(quality), "--scarcity",
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
