"""Patient-level train/validation/test splits and under-sampling, deterministic for a seed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["SPLIT_NAMES", "fold_cases", "select_split", "split_cases", "subsample_cases"]

#: Names of the sets returned by :func:`split_cases`.
SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")


def _unique_sorted(cases: Iterable[str]) -> list[str]:
    """Sorted case ids; a repeated id is an error (a patient must not count twice)."""
    cases = [str(c) for c in cases]
    unique = sorted(set(cases))
    if len(unique) != len(cases):
        repeated = sorted({c for c in cases if cases.count(c) > 1})
        raise ValueError(f"cases holds repeated ids {repeated}; pass each patient once.")
    return unique


def _set_size(n: int, fraction: float) -> int:
    """Size of a held-out set: ``round(n * fraction)``, at least 1 when ``fraction > 0`` and ``n >= 3``."""
    size = round(n * fraction)
    if fraction > 0 and n >= 3:
        size = max(size, 1)
    return size


def split_cases(
    cases: Iterable[str], val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[str]]:
    """Split case (patient) ids into train, validation and test sets.

    The ids are sorted before a seeded shuffle, so the result depends only on the set of ids and the seed, not on
    their order. With 3 or more cases every set whose fraction is > 0 is non-empty, and train always is.

    Args:
        cases: case ids, each once.
        val_fraction: fraction of cases for validation, in [0, 1).
        test_fraction: fraction of cases for test, in [0, 1); ``val_fraction + test_fraction < 1``.
        seed: seed of the shuffle.

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}``, each list sorted.

    Raises:
        ValueError: bad fractions, repeated or no case ids.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}.")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave training cases, got {val_fraction} + {test_fraction}."
        )
    ordered = _unique_sorted(cases)
    n = len(ordered)
    if n == 0:
        raise ValueError("cases is empty: nothing to split.")
    n_val, n_test = _set_size(n, val_fraction), _set_size(n, test_fraction)
    while n - n_val - n_test < 1:  # keep at least one training case; shrink the larger held-out set
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(n)]
    return {
        "train": sorted(shuffled[n_val + n_test :]),
        "validation": sorted(shuffled[:n_val]),
        "test": sorted(shuffled[n_val : n_val + n_test]),
    }


def subsample_cases(cases: Iterable[str], fraction: float, seed: int = 0) -> list[str]:
    """Keep a seeded random ``fraction`` of the cases (patient-level under-sampling), at least one.

    Subsamples of one seed are nested: a smaller fraction keeps a subset of the cases of a larger one.

    Args:
        cases: case ids, each once.
        fraction: share of cases to keep, in (0, 1].
        seed: seed of the draw.

    Returns:
        The kept case ids, sorted.
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    ordered = _unique_sorted(cases)
    if not ordered:
        return []
    size = max(1, round(len(ordered) * fraction))
    order = np.random.default_rng(seed).permutation(len(ordered))
    return sorted(ordered[i] for i in order[:size])


def fold_cases(cases: Iterable[str], fold: int, num_folds: int, seed: int = 0) -> list[str]:
    """The case ids of fold ``fold`` of a seeded ``num_folds``-fold partition of ``cases`` (patient-level).

    The ids are sorted before a seeded shuffle and dealt into folds of sizes differing by at most one, so the folds
    of one seed are disjoint and together hold every case once.

    Args:
        cases: case ids, each once.
        fold: the fold, in ``[0, num_folds)``.
        num_folds: number of folds, at least 2 and at most the number of cases.
        seed: seed of the shuffle.

    Returns:
        The fold's case ids, sorted.

    Raises:
        ValueError: bad ``fold``/``num_folds``, repeated ids or fewer cases than folds.
    """
    if int(num_folds) != num_folds or num_folds < 2:
        raise ValueError(f"num_folds must be an integer >= 2, got {num_folds}.")
    if int(fold) != fold or not 0 <= fold < num_folds:
        raise ValueError(f"fold must be an integer in [0, {num_folds}), got {fold}.")
    ordered = _unique_sorted(cases)
    if len(ordered) < num_folds:
        raise ValueError(f"num_folds ({num_folds}) must not exceed the number of cases ({len(ordered)}).")
    order = np.random.default_rng(seed).permutation(len(ordered))
    return sorted(ordered[i] for i in order[int(fold) :: int(num_folds)])


def select_split(
    datalist: Sequence[dict],
    split_name: str,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    fraction: float = 1.0,
    split_key: str | None = None,
    fold: int | None = None,
    num_folds: int = 5,
) -> list[dict]:
    """Records of one split of a datalist (records carry a ``"case"`` key, the patient).

    Several records of one case (e.g. both eyes of a patient) always go to the same split.

    With ``split_key``, a data set's own test split is kept: records whose ``split_key`` value is ``"test"`` form
    the test set, and the other records are split into train and validation (``val_fraction`` of them;
    ``test_fraction`` unused). Without any record marked ``"test"`` the seeded three-way split applies.

    With ``fold`` (k-fold cross-validation), the test set is fold ``fold`` of a seeded ``num_folds``-fold
    patient-level partition of every case (:func:`fold_cases`; ``split_key`` and ``test_fraction`` unused), and the
    other folds' cases are split into train and validation (``val_fraction`` of them), so over the folds every case is
    a test case once. ``fold=None`` (the default) leaves the split as without these arguments.

    Args:
        datalist: records, e.g. from :func:`~common.data.brats.build_brats_datalist`.
        split_name: ``"train"``, ``"validation"``, ``"test"`` or ``"all"`` (every record, ``fraction`` ignored).
        val_fraction: see :func:`split_cases`.
        test_fraction: see :func:`split_cases`.
        seed: seed of the split and of the under-sampling.
        fraction: share of training cases to keep (:func:`subsample_cases`); other splits are never reduced.
        split_key: record key holding a predefined split name (e.g. ``"source_split"``); None ignores it.
        fold: the held-out fold of k-fold cross-validation, in ``[0, num_folds)``; None: no cross-validation.
        num_folds: number of folds (used with ``fold`` only).

    Returns:
        The records of the split, in datalist order.
    """
    names = (*SPLIT_NAMES, "all")
    if split_name not in names:
        raise ValueError(f"split_name must be one of {list(names)}, got '{split_name}'.")
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    if split_name == "all":
        return list(datalist)
    unique = list(dict.fromkeys(str(r["case"]) for r in datalist))
    if fold is not None:
        fixed_test = set(fold_cases(unique, fold, num_folds, seed))
    else:
        fixed_test = {
            r["case"] for r in datalist if split_key and str(r.get(split_key, "")).strip().lower() == "test"
        }
    if fixed_test:
        rest = [c for c in unique if c not in fixed_test]
        if split_name == "test":
            cases = sorted(fixed_test)
        elif not rest:
            cases = []
        else:
            cases = split_cases(rest, val_fraction, 0.0, seed)[split_name]
    else:
        cases = split_cases(unique, val_fraction, test_fraction, seed)[split_name]
    if split_name == "train" and fraction < 1.0:
        cases = subsample_cases(cases, fraction, seed)
    keep = set(cases)
    return [r for r in datalist if str(r["case"]) in keep]
