"""The benchmark machinery: statistics over seeds, multi-task vs single-task comparison rows, the cost measurement on
a real bundle (cmr_fundus on synthetic photographs), training throughput per strategy phase (brats_mtl), a strategy
comparison run with per-strategy overrides and the inference time of its model (glioma_seg_idh, both on synthetic
volumes), and the results page built from CSVs."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import numpy as np
import pytest

from benchmarks.cost import (
    engine_seconds,
    measure_inference_time,
    measure_strategy,
    measure_throughput,
    measure_weighting_overhead,
    ratio_row,
)
from benchmarks.paired import compare_evaluations, paired_rows, read_per_case, write_paired
from benchmarks.quality import (
    build_parser,
    comparison_rows,
    parse_strategy_overrides,
    record_command,
    run_benchmark,
    runs_table,
)
from benchmarks.results_page import main as results_page_main
from benchmarks.results_page import speed_section
from benchmarks.runner import collect, write_csv
from benchmarks.specs import get_spec
from benchmarks.speed import measure_speed, merge_rows, plot_speed
from benchmarks.stats import mean_ci, paired_difference, rank_auc, summarise, verdict
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


def test_paired_difference_detects_a_known_shift_and_not_a_null_one():
    rng = np.random.default_rng(0)
    n = 60
    cases = np.repeat([f"p{i}" for i in range(n)], 3)  # three samples (slices, or seeds) per patient
    patient = np.repeat(rng.normal(0.8, 0.1, n), 3)  # between-patient spread that pairing removes
    b = patient + rng.normal(0, 0.02, 3 * n)
    shifted = paired_difference(b + 0.03 + rng.normal(0, 0.02, 3 * n), b, cases, n_bootstrap=500)
    assert shifted["ci_low"] > 0 and shifted["p_value"] < 1e-3
    assert shifted["difference"] == pytest.approx(0.03, abs=0.01)
    assert shifted["n_cases"] == n and shifted["n_samples"] == 3 * n
    null = paired_difference(b + rng.normal(0, 0.02, 3 * n), b, cases, n_bootstrap=500)
    assert null["ci_low"] < 0 < null["ci_high"] and null["p_value"] > 0.05
    assert paired_difference(b, b, cases, n_bootstrap=50)["p_value"] == 1.0
    # AUC: a model whose scores separate the classes better than another's, recomputed on the same resamples
    y = (rng.random(200) < 0.4).astype(float)
    good, poor = y + rng.normal(0, 0.5, 200), y + rng.normal(0, 1.5, 200)
    auc = paired_difference(good, poor, labels=y, n_bootstrap=500)
    assert auc["a"] == pytest.approx(rank_auc(good, y)) and auc["ci_low"] > 0
    from common.metrics import roc_auc

    assert rank_auc(poor, y) == pytest.approx(roc_auc(poor, y))  # the metrics' own AUC
    same = paired_difference(good, good + rng.normal(0, 1e-3, 200), labels=y, n_bootstrap=300)
    assert same["ci_low"] <= 0 <= same["ci_high"]
    y_nan = y.copy()
    y_nan[:10] = np.nan  # unknown labels are left out
    assert paired_difference(good, poor, labels=y_nan, n_bootstrap=10)["n_samples"] == 190
    assert verdict(0.03, 0.01, 0.05).startswith("MTL better, by +0.030 [+0.010, +0.050]")
    assert verdict(0.03, 0.01, 0.05, higher_is_better=False).startswith("MTL worse")
    assert verdict(-0.01, -0.03, 0.01).startswith("no detectable difference")
    assert verdict(0.1, math.nan, math.nan).startswith("not enough data")
    with pytest.raises(ValueError, match="a and b"):
        paired_difference([1, 2], [1])
    with pytest.raises(ValueError, match="cases"):
        paired_difference([1, 2], [1, 2], ["a"])


def test_compare_two_evaluations_of_the_same_cases(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 2
    dice_b = rng.uniform(0.6, 0.9, 40)
    for name, dice, prob in (("a", dice_b + 0.05, labels * 0.6 + 0.2), ("b", dice_b, rng.uniform(0, 1, 40))):
        with open(tmp_path / f"{name}.csv", "w") as f:
            f.write("case,dice_mean,idh_label,idh_prob\n")
            f.writelines(f"p{i},{d},{lab},{pr}\n" for i, (d, lab, pr) in enumerate(zip(dice, labels, prob)))
    dice, auc = compare_evaluations(tmp_path / "a.csv", tmp_path / "b.csv", ["dice_mean", "idh_auc"], n_bootstrap=200)
    assert dice["difference"] == pytest.approx(0.05) and dice["ci_low"] > 0 and dice["n_cases"] == 40
    assert auc["a"] == 1.0 and auc["difference"] > 0
    with pytest.raises(ValueError, match="'hd95_mean' has no per-case column"):
        compare_evaluations(tmp_path / "a.csv", tmp_path / "b.csv", ["hd95_mean"])
    (tmp_path / "c.csv").write_text("case,dice_mean\nq0,0.5\n")
    with pytest.raises(ValueError, match="not the same cases"):
        compare_evaluations(tmp_path / "a.csv", tmp_path / "c.csv", ["dice_mean"])


def test_paired_rows_line_up_runs_of_one_seed_and_fold(tmp_path):
    spec = get_spec("fundus_glaucoma")
    rng = np.random.default_rng(1)
    records = []
    for fold in (0, 1):
        cases = [f"img{fold}{i}" for i in range(12)]
        labels = np.arange(12) % 2
        for strategy, dice, noise in [("mtl", 0.9, 0.3), ("stl_seg", 0.8, 9.0), ("stl_cls", math.nan, 3.0)]:
            folder = tmp_path / "fundus_glaucoma" / f"{strategy}_frac1_seed0_fold{fold}" / "eval"
            folder.mkdir(parents=True)
            rows = [{"case": c, "disc_dice": dice + 0.01 * rng.random(), "glaucoma_head_label": y,
                     "glaucoma_head_prob": 1 / (1 + math.exp(-(y - 0.5) * 4 - noise * rng.normal()))}
                    for c, y in zip(cases, labels)]  # fmt: skip
            write_csv(rows, folder / "per_case.csv")
            records.append({"strategy": strategy, "tag": "", "train_fraction": 1.0, "seed": 0, "fold": fold,
                            "train_minutes": 2.0 + fold if strategy == "mtl" else 1.0,
                            "overrides": f"strategy={strategy} epochs=5"})  # fmt: skip
    rows = {r["metric"]: r for r in paired_rows(spec, records, tmp_path / "fundus_glaucoma", n_bootstrap=200)}
    assert set(rows) == {"disc_dice", "glaucoma_head_auc"}  # cup Dice and vCDR have no per-case column here
    dice = rows["disc_dice"]
    assert dice["n_pairs"] == 2 and dice["n_folds"] == 2 and dice["n_cases"] == 24 and dice["stl"] == "stl_seg"
    assert dice["difference"] == pytest.approx(0.1, abs=0.01) and dice["verdict"].startswith("MTL better, by +0.")
    assert rows["glaucoma_head_auc"]["wilcoxon_on"] == "|label - probability|"
    # the budget beside the verdict: overrides beyond the strategy, mean training minutes of each side
    assert (dice["settings"], dice["mtl_train_minutes"], dice["stl_train_minutes"]) == ("epochs=5", 2.5, 1.0)
    write_paired(list(rows.values()), tmp_path)
    md = (tmp_path / "paired.md").read_text()
    assert "fundus_glaucoma, disc Dice" in md
    assert "fundus_glaucoma, mtl vs stl_seg: trained with epochs=5; 2.5 vs 1.0 training minutes per run" in md
    assert len(read_per_case(tmp_path / "fundus_glaucoma" / "mtl_frac1_seed0_fold0" / "eval" / "per_case.csv")) == 12
    records.append({"strategy": "stl_seg", "tag": "", "train_fraction": 1.0, "seed": 0, "fold": 1})
    broken = tmp_path / "fundus_glaucoma" / "stl_seg_frac1_seed0_fold1" / "eval" / "per_case.csv"
    write_csv([{"case": "other", "disc_dice": 0.5}], broken)
    with pytest.raises(ValueError, match="not the same cases"):
        paired_rows(spec, records, tmp_path / "fundus_glaucoma", n_bootstrap=10)


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
    assert "## Speed switches" in page and "| cmr_fundus | bf16 |" in page and "benchmarks.speed --device" in page
    record_command(out, "python -m benchmarks.speed --threads 2 --out x")  # what a run writes: the page shows it
    page = "\n".join(speed_section(out, tmp_path / "assets"))
    assert "    python -m benchmarks.speed --threads 2 --out x" in page and "--device" not in page
    other = [dict(r, bundle="brats_mtl") for r in rows]  # a later run of one bundle keeps the others' rows
    merged = merge_rows(out / "speed.csv", other)
    assert [r["bundle"] for r in merged] == ["brats_mtl"] * len(rows) + ["cmr_fundus"] * len(rows)
    assert merge_rows(out / "speed.csv", rows) == rows
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
    none = str(tmp_path / "none")

    def build_page(*extra: str, quality_dir: str = str(quality)) -> str:
        import sys

        argv = sys.argv
        sys.argv = ["results_page", "--cost", none, "--speed", none, "--quality", quality_dir, "--scarcity", none,
                    "--weighting", none, "--affinity", str(tmp_path / "affinity"), "--preamble",
                    str(tmp_path / "none.md"), "--out", str(out), *extra]  # fmt: skip
        try:
            results_page_main()
        finally:
            sys.argv = argv
        return out.read_text()

    page = build_page()
    assert "## 2. Quality at equal budget" in page and "## 1. Cost" not in page
    assert "paired, case by case" not in page.lower()  # no paired.csv: no verdict lines
    write_csv([{"bundle": "fundus_glaucoma", "metric": "disc_dice", "label": "disc Dice", "higher_is_better": True,
                "mtl": "mtl", "stl": "stl_seg", "train_fraction": 1.0, "n_pairs": 5, "n_seeds": 1, "n_folds": 5,
                "n_cases": 101, "n_samples": 101, "mtl_value": 0.95, "stl_value": 0.94, "difference": 0.01,
                "ci_low": 0.004, "ci_high": 0.016, "p_wilcoxon": 0.002, "wilcoxon_on": "per-case value",
                "verdict": verdict(0.01, 0.004, 0.016)}], quality / "paired.csv")  # fmt: skip
    (quality / "fundus_glaucoma").mkdir()
    (quality / "fundus_glaucoma" / "commands.txt").write_text("python -m benchmarks.quality --folds 5 --tag cpu\n")
    page = build_page()
    assert "    python -m benchmarks.quality --folds 5 --tag cpu\n" in page  # the command that ran, not a default
    first = page.index("## Is multi-task better? Paired, case by case")
    assert first < page.index("## 2. Quality") and "MTL better, by +0.010 [+0.004, +0.016]" in page
    assert "Wilcoxon p = 0.002; 101 cases, 1 seed(s), 5 fold(s)" in page
    assert "mtl: 0.935" in page and "stl_seg: 0.955" in page and "single-task" in page
    assert "## Task affinity" in page and "0.1400" not in page and "0.140" in page
    assert (out.parent / "results" / "affinity.png").stat().st_size > 0
    assert list(csv.DictReader(open(out.parent / "results" / "quality.csv")))
    # only the paired section rebuilt, from another folder; the sections whose runs are not here are kept as they were
    other = tmp_path / "cv"
    write_csv([{**next(csv.DictReader(open(quality / "paired.csv"))), "difference": 0.02, "ci_low": -0.01,
                "ci_high": 0.05, "verdict": verdict(0.02, -0.01, 0.05)}], other / "paired.csv")  # fmt: skip
    spliced = build_page("--sections", "paired", "--paired", str(other), quality_dir=none)
    assert "no detectable difference" in spliced and "MTL better, by +0.010" not in spliced
    assert spliced.index("## Is multi-task better?") < spliced.index("## 2. Quality") < spliced.index("## Task aff")
    assert spliced.split("## 2. Quality")[1] == page.split("## 2. Quality")[1]  # kept word for word


@pytest.mark.slow  # about 2 minutes of CPU (8 bundle runs), longer on a busy machine
def test_two_fold_paired_quality_run_on_demo_data(tmp_path):
    """Two-fold cross-validation of glioma_seg_idh's multi-task and segmentation-only models (one seed, one epoch,
    tiny networks): every case is a test case once, and paired.csv compares the two on those cases."""
    data = tmp_path / "brats"
    generate_brats_like(data, n_cases=8, shape=(32, 32, 12), seed=5)
    out = tmp_path / "quality"
    small = [f"{k}={v}" for k, v in GLIOMA_SMALL.items()]
    args = build_parser("", [1.0], str(out)).parse_args(
        ["--bundles", "glioma_seg_idh", "--dataset_dir", str(data), "--strategies", "mtl", "stl_seg", "--seeds", "0",
         "--folds", "2", "--paired", "--n_bootstrap", "200", "--out", str(out), "--override", "epochs=1",
         "val_interval=1", *small]
    )  # fmt: skip
    run_benchmark(args, "quality", command="python -m benchmarks.quality --folds 2")
    run_benchmark(args, "quality", command="python -m benchmarks.quality --folds 2")  # resumed: nothing runs again
    assert (out / "glioma_seg_idh" / "commands.txt").read_text() == "python -m benchmarks.quality --folds 2\n"
    records = collect(out / "glioma_seg_idh")
    assert sorted((r["strategy"], r["fold"], r["num_folds"]) for r in records) == [
        ("mtl", 0, 2), ("mtl", 1, 2), ("stl_seg", 0, 2), ("stl_seg", 1, 2)
    ]  # fmt: skip
    cases = sorted(p.name for p in data.iterdir() if p.is_dir())  # a case folder per patient
    tested: list[str] = []
    for fold in (0, 1):
        rows = read_per_case(out / "glioma_seg_idh" / f"mtl_frac1_seed0_fold{fold}" / "eval" / "per_case.csv")
        stl = read_per_case(out / "glioma_seg_idh" / f"stl_seg_frac1_seed0_fold{fold}" / "eval" / "per_case.csv")
        assert [r["case"] for r in rows] == [r["case"] for r in stl] and len(rows) == 4
        tested += [r["case"] for r in rows]
    assert len(tested) == len(set(tested)) == 8 and sorted(tested) == cases  # each case tested once over the folds
    with open(out / "paired.csv") as f:
        paired = {r["metric"]: r for r in csv.DictReader(f)}
    assert set(paired) == {"dice_mean", "hd95_mean"}  # the single-task model compared is the segmentation one
    dice = paired["dice_mean"]
    assert (dice["stl"], dice["n_pairs"], dice["n_folds"], dice["n_cases"]) == ("stl_seg", "2", "2", "8")
    assert math.isfinite(float(dice["difference"])) and dice["verdict"]
    assert float(dice["difference"]) == pytest.approx(float(dice["mtl_value"]) - float(dice["stl_value"]))
    assert "glioma_seg_idh, Dice" in (out / "paired.md").read_text()


def test_weighting_overhead_rows():
    rows = measure_weighting_overhead(["ew", "mgda"], size=16, batch=2, device="cpu", steps=1, warmup=0)
    assert [(r["method"], r["autogram"]) for r in rows] == [("ew", False), ("mgda", False), ("mgda", True)]
    assert rows[0]["vs_ew"] == 1.0 and all(r["step_s"] > 0 for r in rows)
