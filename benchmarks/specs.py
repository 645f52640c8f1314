"""What the benchmarks run for each bundle: its real data set, its multi-task model and single-task variants (as
config overrides), and the metrics that compare them.

A strategy here is a named set of overrides of the bundle's own ``train.json``/``evaluate.json`` (the same the
bundle's docs give users), so a benchmark row is always reproducible with the plain monai.bundle CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@dataclass(frozen=True)
class Metric:
    """A metric of ``metrics.json``: its key, a label for tables and plots, whether higher is better, and the
    single-task strategy whose model it is compared against (``None``: compared against every strategy)."""

    key: str
    label: str
    higher_is_better: bool = True
    stl: str | None = None


@dataclass(frozen=True)
class BundleSpec:
    """One bundle's benchmark settings.

    Attributes:
        name: bundle folder under ``bundles/``.
        data: default data set folder name under ``../shared/data``.
        mtl: the multi-task strategy's name.
        strategies: strategy name -> overrides for train and evaluate (``strategy`` included).
        single_task: task -> the single-task strategy that trains only that task.
        metrics: the headline metrics, each tied to the task it measures.
        extra_configs: configs merged after train.json / evaluate.json (e.g. a data set's factor table).
        overrides: overrides for every run (e.g. a speed setting).
        weighting_override: the override key that selects a loss-weighting method.
        auxiliary_tasks: tasks trained only to help the others and not run at inference (the deployed
            ``inference.json`` switches them off), so the cost benchmark's inference pass leaves them out too.
        other_strategies: further strategies of the bundle (name -> overrides), run only when named (e.g.
            ``--strategies``), never by default.
    """

    name: str
    data: str
    mtl: str
    strategies: dict[str, dict[str, str]]
    single_task: dict[str, str]
    metrics: tuple[Metric, ...]
    extra_configs: tuple[str, ...] = ()
    overrides: dict[str, str] = field(default_factory=dict)
    weighting_override: str = "weighting_name"
    auxiliary_tasks: tuple[str, ...] = ()
    other_strategies: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def default_dataset_dir(self) -> Path:
        return SHARED_DATA / self.data

    def strategy_overrides(self, strategy: str) -> dict[str, str]:
        """The overrides that select ``strategy`` (one of ``strategies`` or ``other_strategies``).

        Raises:
            ValueError: the bundle has no such strategy.
        """
        known = {**self.strategies, **self.other_strategies}
        if strategy not in known:
            raise ValueError(f"strategy must be one of {sorted(known)} for {self.name}, got '{strategy}'.")
        return dict(known[strategy])


CMR_FACTORS = ("age", "sex", "diabetes", "hypertension")

SPECS: dict[str, BundleSpec] = {
    "brats_mtl": BundleSpec(
        name="brats_mtl",
        data="lgg",
        mtl="mtl",
        strategies={"mtl": {"strategy": "mtl"}, "stl": {"strategy": "stl"}},
        # masked image modelling is an auxiliary task with no clinical single-task model of its own
        single_task={"cls": "stl"},
        metrics=(Metric("cls_auc", "tumour slice AUC", stl="stl"), Metric("cls_accuracy", "accuracy", stl="stl")),
        auxiliary_tasks=("mim",),
        # masked-image-modelling pre-training, then classification, in the same epochs
        other_strategies={"pretrain_finetune": {"strategy": "pretrain_finetune"}},
    ),
    "glioma_seg_idh": BundleSpec(
        name="glioma_seg_idh",
        data="lgg",
        mtl="mtl",
        strategies={
            "mtl": {"strategy": "mtl"},
            "stl_seg": {"strategy": "stl_seg"},
            # an IDH-only model has no segmentation to pool over: average the whole-volume predictions
            "stl_idh": {"strategy": "stl_idh", "idh_aggregation": "mean"},
        },
        single_task={"seg": "stl_seg", "idh": "stl_idh"},
        metrics=(
            Metric("dice_mean", "Dice", stl="stl_seg"),
            Metric("hd95_mean", "HD95", higher_is_better=False, stl="stl_seg"),
            Metric("idh_auc", "IDH AUC", stl="stl_idh"),
        ),
    ),
    "fundus_glaucoma": BundleSpec(
        name="fundus_glaucoma",
        data="drishti_gs1",
        mtl="mtl",
        strategies={s: {"strategy": s} for s in ("mtl", "stl_seg", "stl_cls")},
        single_task={"seg": "stl_seg", "glaucoma": "stl_cls"},
        metrics=(
            Metric("disc_dice", "disc Dice", stl="stl_seg"),
            Metric("cup_dice", "cup Dice", stl="stl_seg"),
            Metric("vcdr_mae", "vCDR MAE", higher_is_better=False, stl="stl_seg"),
            Metric("glaucoma_head_auc", "glaucoma AUC (head)", stl="stl_cls"),
        ),
        other_strategies={"cool": {"strategy": "cool"}},
    ),
    "cmr_fundus": BundleSpec(
        name="cmr_fundus",
        data="odir5k",
        mtl="sepl",
        strategies={
            "sepl": {"strategy": "sepl"},
            **{f"stl_{f}": {"strategy": "independent", "factor_subset": f"['{f}']"} for f in CMR_FACTORS},
        },
        single_task={f: f"stl_{f}" for f in CMR_FACTORS},
        metrics=(
            Metric("age_mae", "age MAE (years)", higher_is_better=False, stl="stl_age"),
            Metric("sex_auc", "sex AUC", stl="stl_sex"),
            Metric("diabetes_auc", "diabetes AUC", stl="stl_diabetes"),
            Metric("hypertension_auc", "hypertension AUC", stl="stl_hypertension"),
        ),
        extra_configs=("odir5k.json",),
        # the whole factor table without propagating the priors: per-factor heads, or experts and gates
        other_strategies={s: {"strategy": s} for s in ("independent", "moe")},
    ),
}


def get_spec(name: str) -> BundleSpec:
    """The benchmark settings of bundle ``name``.

    Raises:
        ValueError: ``name`` is not a bundle with benchmark settings.
    """
    if name not in SPECS:
        raise ValueError(f"bundle must be one of {sorted(SPECS)}, got '{name}'.")
    return SPECS[name]
