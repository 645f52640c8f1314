"""Tests of common.data: datalists, data checks, splits, slice extraction and the synthetic generator."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data import (
    BRATS_MODALITIES,
    DatasetError,
    brain_mask,
    build_brats_datalist,
    build_slice_dataset,
    extract_axial_slices,
    fold_cases,
    generate_brats_like,
    load_case_volumes,
    read_case_labels,
    select_split,
    split_cases,
    subsample_cases,
)
from common.data.synthetic import main as synthetic_main

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BRATS_LABELS = (0, 1, 2, 4)
SMALL = (32, 32, 16)


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)


def _read(path: Path | str) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


@pytest.fixture()
def small_set(tmp_path: Path) -> Path:
    """Three small synthetic cases in a fresh folder (safe to damage)."""
    out = tmp_path / "data"
    generate_brats_like(out, n_cases=3, shape=SMALL, lesion_fraction=1.0, seed=1)
    return out


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve synthetic cases shared by the read-only tests."""
    out = tmp_path_factory.mktemp("synth")
    generate_brats_like(out, n_cases=12, shape=(48, 48, 20), seed=0)
    return out


def _record(root: Path, case: str, modalities=("flair", "t1ce")) -> dict:
    return next(r for r in build_brats_datalist(root, list(modalities)) if r["case"] == case)


# ----------------------------------------------------------------------------------------------- datalist


def test_datalist_subfolder_layout_order_and_extra_files(small_set: Path):
    case_dir = small_set / "synth_000"
    (small_set / "LICENSE.txt").write_text("licence")
    (small_set / "notes").mkdir()
    (small_set / "notes" / "readme.md").write_text("not a case")
    shutil.copy(case_dir / "synth_000_flair.nii.gz", case_dir / "synth_000_brainmask.nii.gz")
    (case_dir / "synth_000_t1.nii.gz").rename(case_dir / "synth_000_t1.nii")  # plain .nii is accepted too

    datalist = build_brats_datalist(small_set, ["flair", "t1", "t1ce"])

    assert [r["case"] for r in datalist] == ["synth_000", "synth_001", "synth_002"]
    first = datalist[0]
    assert first["image"] == [
        str(case_dir / n) for n in ("synth_000_flair.nii.gz", "synth_000_t1.nii", "synth_000_t1ce.nii.gz")
    ]
    assert (
        first["flair"] == first["image"][0] and first["t1"] == first["image"][1] and first["t1ce"] == first["image"][2]
    )
    assert first["seg"] == str(case_dir / "synth_000_seg.nii.gz")
    assert set(first) == {"case", "image", "seg", "flair", "t1", "t1ce"}  # no brainmask, t2 not requested


def test_datalist_flat_layout(small_set: Path, tmp_path: Path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in small_set.glob("*/*.nii.gz"):
        shutil.copy(path, flat / path.name)
    shutil.copy(small_set / "labels.csv", flat / "labels.csv")

    datalist = build_brats_datalist(flat, ["t1ce", "flair"])

    assert [r["case"] for r in datalist] == ["synth_000", "synth_001", "synth_002"]
    assert datalist[1]["image"] == [str(flat / "synth_001_t1ce.nii.gz"), str(flat / "synth_001_flair.nii.gz")]
    assert datalist[1]["seg"] == str(flat / "synth_001_seg.nii.gz")


def test_datalist_unknown_modality_is_value_error(small_set: Path):
    with pytest.raises(ValueError, match="modalities") as info:
        build_brats_datalist(small_set, ["flair", "dwi"])
    assert "dwi" in str(info.value) and not isinstance(info.value, DatasetError)


def test_datalist_missing_modality_names_case_and_file(small_set: Path):
    (small_set / "synth_001" / "synth_001_t1ce.nii.gz").unlink()
    with pytest.raises(DatasetError) as info:
        build_brats_datalist(small_set, ["flair", "t1ce"])
    message = str(info.value)
    assert "synth_001" in message and "synth_001_t1ce.nii.gz" in message and "flair" in message


def test_datalist_missing_seg(small_set: Path):
    (small_set / "synth_002" / "synth_002_seg.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"synth_002_seg\.nii\.gz"):
        build_brats_datalist(small_set, ["flair"])
    records = build_brats_datalist(small_set, ["flair"], require_seg=False)
    assert records[2]["seg"] is None and records[0]["seg"] is not None


@pytest.mark.parametrize("content", ["missing", "empty", "unrelated"])
def test_empty_data_set(tmp_path: Path, content: str):
    folder = tmp_path / "dataset"
    if content != "missing":
        folder.mkdir()
    if content == "unrelated":
        (folder / "LICENSE.txt").write_text("licence")
        (folder / "labels.csv").write_text("patient,idh_status\n")
        (folder / "case1").mkdir()
        _save(folder / "case1" / "case1_brainmask.nii.gz", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(DatasetError, match="empty data set") as info:
        build_brats_datalist(folder, ["flair"])
    assert str(folder) in str(info.value)


def test_read_case_labels(synth_set: Path, tmp_path: Path):
    labels = read_case_labels(synth_set / "labels.csv", "idh_status", allowed={"mutant", "wildtype", "unknown"})
    assert len(labels) == 12 and set(labels.values()) <= {"mutant", "wildtype", "unknown"}

    bad = tmp_path / "labels.csv"
    bad.write_text("patient,idh_status\ncase_a,mutant\ncase_b,maybe\n")
    with pytest.raises(DatasetError) as info:
        read_case_labels(bad, "idh_status", allowed=["mutant", "wildtype"])
    assert str(bad) in str(info.value) and "row 3" in str(info.value) and "case_b" in str(info.value)
    with pytest.raises(DatasetError, match="no column 'grade'"):
        read_case_labels(bad, "grade")


# ----------------------------------------------------------------------------------------------- data checks


def _assert_names(err: pytest.ExceptionInfo, case: str, file_name: str) -> None:
    message = str(err.value)
    assert case in message, message
    assert file_name in message, message


def test_shape_mismatch_between_modalities(small_set: Path):
    _save(small_set / "synth_001" / "synth_001_t1ce.nii.gz", np.ones((32, 32, 15), np.float32))
    with pytest.raises(DatasetError, match="shape") as info:
        load_case_volumes(_record(small_set, "synth_001"))
    _assert_names(info, "synth_001", "synth_001_t1ce.nii.gz")


def test_shape_mismatch_between_image_and_mask(small_set: Path):
    _save(small_set / "synth_000" / "synth_000_seg.nii.gz", np.zeros((30, 32, 16), np.uint8))
    with pytest.raises(DatasetError, match="shape") as info:
        load_case_volumes(_record(small_set, "synth_000"))
    _assert_names(info, "synth_000", "synth_000_seg.nii.gz")


@pytest.mark.parametrize("bad_value, word", [(np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite")])
def test_non_finite_voxels(small_set: Path, bad_value: float, word: str):
    path = small_set / "synth_002" / "synth_002_flair.nii.gz"
    data = _read(path).astype(np.float32)
    data[3, 4, 5] = bad_value
    _save(path, data)
    with pytest.raises(DatasetError, match=word) as info:
        load_case_volumes(_record(small_set, "synth_002"))
    _assert_names(info, "synth_002", "synth_002_flair.nii.gz")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_file(small_set: Path, damage: str):
    path = small_set / "synth_001" / "synth_001_flair.nii.gz"
    if damage == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(2000))
    else:
        path.write_bytes(path.read_bytes()[:400])
    record = _record(small_set, "synth_001")  # the name is right, so the datalist still finds the file
    with pytest.raises(DatasetError) as info:
        load_case_volumes(record)
    _assert_names(info, "synth_001", "synth_001_flair.nii.gz")


def test_mask_labels_outside_set(small_set: Path):
    path = small_set / "synth_000" / "synth_000_seg.nii.gz"
    seg = _read(path)
    seg[0, 0, 0], seg[1, 0, 0] = 3, 7
    _save(path, seg)
    record = _record(small_set, "synth_000")
    with pytest.raises(DatasetError, match=r"\[3, 7\]") as info:
        load_case_volumes(record, label_values=BRATS_LABELS)
    _assert_names(info, "synth_000", "synth_000_seg.nii.gz")
    with pytest.raises(DatasetError, match=r"synth_000_seg\.nii\.gz"):
        extract_axial_slices(record, label_values=BRATS_LABELS)
    load_case_volumes(record)  # no label set given: any integer label is accepted


def test_non_integer_mask_and_not_3d(small_set: Path):
    seg_path = small_set / "synth_000" / "synth_000_seg.nii.gz"
    _save(seg_path, _read(seg_path).astype(np.float32) + 0.5)
    with pytest.raises(DatasetError, match="non-integer") as info:
        load_case_volumes(_record(small_set, "synth_000"))
    _assert_names(info, "synth_000", "synth_000_seg.nii.gz")

    flair = small_set / "synth_001" / "synth_001_flair.nii.gz"
    _save(flair, np.ones((32, 32), np.float32))
    with pytest.raises(DatasetError, match="3-D") as info:
        load_case_volumes(_record(small_set, "synth_001"))
    _assert_names(info, "synth_001", "synth_001_flair.nii.gz")


def test_trailing_singleton_and_reorientation(small_set: Path):
    case_dir = small_set / "synth_002"
    reference, ref_seg = load_case_volumes(_record(small_set, "synth_002"))
    flair = _read(case_dir / "synth_002_flair.nii.gz")
    _save(case_dir / "synth_002_flair.nii.gz", flair[..., None])  # (X, Y, Z, 1)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])  # t1ce and seg stored with flipped x and y (LPS, as BraTS files)
    for name in ("synth_002_t1ce.nii.gz", "synth_002_seg.nii.gz"):
        data = _read(case_dir / name)
        _save(case_dir / name, np.ascontiguousarray(data[::-1, ::-1]), lps)
    image, seg = load_case_volumes(_record(small_set, "synth_002"))
    assert image.shape == reference.shape and image.dtype == np.float32
    np.testing.assert_array_equal(image, reference)  # reoriented back to RAS
    np.testing.assert_array_equal(seg, ref_seg)


# ----------------------------------------------------------------------------------------------- splits


def test_split_is_patient_level_deterministic_and_order_free():
    cases = [f"case_{i:02d}" for i in range(23)]
    split = split_cases(cases, val_fraction=0.2, test_fraction=0.2, seed=3)
    sets = [set(split[k]) for k in ("train", "validation", "test")]
    assert all(sets)
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == set(cases)
    assert (len(split["validation"]), len(split["test"])) == (5, 5)
    assert split_cases(list(reversed(cases)), 0.2, 0.2, seed=3) == split
    assert split_cases(np.random.default_rng(0).permutation(cases).tolist(), 0.2, 0.2, seed=3) == split
    assert split_cases(cases, 0.2, 0.2, seed=4) != split


def test_split_small_and_bad_inputs():
    split = split_cases(["a", "b", "c"], 0.1, 0.1)
    assert all(len(split[k]) == 1 for k in ("train", "validation", "test"))
    assert split_cases(["a", "b", "c", "d"], 0.0, 0.25)["validation"] == []
    for val, test in [(-0.1, 0.2), (0.2, 1.0), (0.5, 0.5)]:
        with pytest.raises(ValueError, match="fraction"):
            split_cases(["a", "b", "c"], val, test)
    with pytest.raises(ValueError, match="repeated"):
        split_cases(["a", "a", "b"])


def test_k_fold_split_holds_every_case_out_once():
    datalist = [{"case": f"p{i:02d}", "eye": e, "split": "test" if i < 3 else "train"} for i in range(17) for e in "LR"]
    cases = sorted({r["case"] for r in datalist})
    tests = []
    for fold in range(5):
        parts = {s: select_split(datalist, s, 0.2, 0.3, seed=4, split_key="split", fold=fold, num_folds=5)
                 for s in ("train", "validation", "test")}  # fmt: skip
        ids = {s: {r["case"] for r in recs} for s, recs in parts.items()}
        assert ids["test"] == set(fold_cases(cases, fold, 5, seed=4)) and len(ids["test"]) in (3, 4)
        assert not (ids["train"] & ids["validation"] or ids["train"] & ids["test"] or ids["validation"] & ids["test"])
        assert ids["train"] | ids["validation"] | ids["test"] == set(cases)  # both eyes follow their patient
        assert len(ids["validation"]) == round(0.2 * (17 - len(ids["test"])))  # carved from the training folds
        assert len(parts["test"]) == 2 * len(ids["test"])
        tests += sorted(ids["test"])
    assert sorted(tests) == cases  # every case is a test case exactly once
    assert fold_cases(list(reversed(cases)), 1, 5, seed=4) == fold_cases(cases, 1, 5, seed=4)
    assert fold_cases(cases, 1, 5, seed=5) != fold_cases(cases, 1, 5, seed=4)
    # without a fold the split is unchanged (the data set's own test split kept)
    assert select_split(datalist, "test", 0.2, 0.3, seed=4, split_key="split", num_folds=3) == select_split(
        datalist, "test", 0.2, 0.3, seed=4, split_key="split"
    )
    for fold, k, match in [(5, 5, "fold"), (-1, 5, "fold"), (0, 1, "num_folds"), (0, 18, "num_folds")]:
        with pytest.raises(ValueError, match=match):
            fold_cases(cases, fold, k)


def test_subsample_cases():
    cases = [f"p{i}" for i in range(20)]
    half = subsample_cases(cases, 0.5, seed=1)
    assert len(half) == 10 and set(half) <= set(cases)
    assert subsample_cases(reversed(cases), 0.5, seed=1) == half
    assert set(subsample_cases(cases, 0.25, seed=1)) <= set(half)  # nested
    assert len(subsample_cases(cases, 0.01)) == 1
    with pytest.raises(ValueError):
        subsample_cases(cases, 0.0)


def test_select_split():
    datalist = [{"case": f"c{i:02d}", "image": []} for i in range(20)]
    parts = {name: select_split(datalist, name, 0.2, 0.2, seed=0) for name in ("train", "validation", "test")}
    assert sum(len(p) for p in parts.values()) == 20
    assert select_split(datalist, "all", 0.2, 0.2, 0) == datalist
    reduced = select_split(datalist, "train", 0.2, 0.2, seed=0, fraction=0.5)
    assert len(reduced) == 6 and all(r in parts["train"] for r in reduced)
    assert select_split(datalist, "test", 0.2, 0.2, seed=0, fraction=0.5) == parts["test"]
    with pytest.raises(ValueError, match="split_name"):
        select_split(datalist, "val", 0.2, 0.2, 0)


# ----------------------------------------------------------------------------------------------- slices


def test_slice_labels_and_format(synth_set: Path):
    record = _record(synth_set, "synth_000")
    _, seg = load_case_volumes(record)
    samples = extract_axial_slices(record, label_values=BRATS_LABELS)
    assert samples
    tumour_pixels = (seg > 0).sum(axis=(0, 1))
    for sample in samples:
        z = sample["slice"]
        assert sample["case"] == "synth_000"
        assert sample["image"].shape == (2, 48, 48) and sample["image"].dtype == np.float32
        assert sample["seg"].shape == (1, 48, 48) and sample["seg"].dtype == np.uint8
        np.testing.assert_array_equal(sample["seg"][0], (seg[..., z] > 0).astype(np.uint8))
        assert sample["label"] == int(tumour_pixels[z] > 0)
    assert {s["label"] for s in samples} == {0, 1}
    big = extract_axial_slices(record, min_tumour_pixels=int(tumour_pixels.max()))
    assert sum(s["label"] for s in big) == int((tumour_pixels == tumour_pixels.max()).sum())


def test_brain_free_slices_are_excluded(synth_set: Path):
    record = _record(synth_set, "synth_003")
    image, _ = load_case_volumes(record)
    empty = set(np.flatnonzero(~image.any(axis=(0, 1, 2))).tolist())  # every modality exactly 0
    assert empty, "the generator should leave slices above and below the head empty"
    kept = {s["slice"] for s in extract_axial_slices(record)}
    assert kept and not kept & empty
    assert len(kept) < image.shape[-1]
    everything = extract_axial_slices(record, min_brain_fraction=0.0)
    assert [s["slice"] for s in everything] == list(range(image.shape[-1]))
    stricter = {s["slice"] for s in extract_axial_slices(record, min_brain_fraction=0.3)}
    assert stricter < kept


def test_normalisation_over_brain(synth_set: Path):
    record = _record(synth_set, "synth_004", modalities=BRATS_MODALITIES)
    image, _ = load_case_volumes(record)
    mask = brain_mask(image)
    assert 0.1 < mask.mean() < 0.6
    samples = extract_axial_slices(record, min_brain_fraction=0.0)
    volume = np.stack([s["image"] for s in samples], axis=-1)
    for channel in volume:
        assert abs(channel[mask].mean()) < 1e-3 and abs(channel[mask].std() - 1.0) < 1e-3
    raw = extract_axial_slices(record, min_brain_fraction=0.0, normalize=False)
    np.testing.assert_allclose(np.stack([s["image"] for s in raw], axis=-1), image)


def test_slices_without_seg(small_set: Path):
    (small_set / "synth_000" / "synth_000_seg.nii.gz").unlink()
    record = build_brats_datalist(small_set, ["flair"], require_seg=False)[0]
    samples = extract_axial_slices(record)
    assert samples and all("seg" not in s and s["label"] == -1 for s in samples)


def test_build_slice_dataset(small_set: Path):
    records = build_brats_datalist(small_set, ["flair", "t1ce"])
    samples = build_slice_dataset(records, label_values=BRATS_LABELS)
    assert {s["case"] for s in samples} == {"synth_000", "synth_001", "synth_002"}
    for case_dir in small_set.iterdir():
        for path in case_dir.glob("*_[ft]*.nii.gz"):
            _save(path, np.zeros(SMALL, np.float32))  # blank images: every slice brain-free
    with pytest.raises(DatasetError, match="no slices kept") as info:
        build_slice_dataset(records)
    assert "synth_001" in str(info.value) and str(small_set) in str(info.value)
    with pytest.raises(DatasetError):
        build_slice_dataset([])


# ----------------------------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic(tmp_path: Path):
    kwargs = {"n_cases": 4, "shape": SMALL, "modalities": ("t1ce", "flair")}
    first = generate_brats_like(tmp_path / "a", seed=5, **kwargs)
    second = generate_brats_like(tmp_path / "b", seed=5, **kwargs)
    generate_brats_like(tmp_path / "c", seed=6, **kwargs)
    assert first == second
    assert (tmp_path / "a" / "labels.csv").read_text() == (tmp_path / "b" / "labels.csv").read_text()
    for case in first:
        for kind in ("t1ce", "flair", "seg"):
            name = f"{case}/{case}_{kind}.nii.gz"
            np.testing.assert_array_equal(_read(tmp_path / "a" / name), _read(tmp_path / "b" / name))
    name = f"{first[0]}/{first[0]}_flair.nii.gz"
    assert not np.array_equal(_read(tmp_path / "a" / name), _read(tmp_path / "c" / name))


def test_synthetic_content(synth_set: Path):
    labels = read_case_labels(synth_set / "labels.csv", "idh_status", allowed=("mutant", "wildtype", "unknown"))
    no_lesion = 0
    for record in build_brats_datalist(synth_set, list(BRATS_MODALITIES)):
        seg = _read(record["seg"])
        flair = nib.load(record["flair"])
        assert flair.get_data_dtype() == np.float32 and nib.aff2axcodes(flair.affine) == ("R", "A", "S")
        assert np.allclose(nib.affines.voxel_sizes(flair.affine), 1.0)
        data = np.asanyarray(flair.dataobj)
        assert data.min() == 0.0 and not data[..., 0].any() and not data[..., -1].any()
        assert set(np.unique(seg).tolist()) <= set(BRATS_LABELS)
        status = labels[record["case"]]
        if not seg.any():
            no_lesion += 1
            assert status == "unknown"
        else:
            assert status == ("wildtype" if (seg == 4).any() else "mutant")  # visible: enhancing rim on T1ce
            t1ce = _read(record["t1ce"])
            if (seg == 4).any():
                assert t1ce[seg == 4].mean() > t1ce[(seg == 0) & (t1ce > 0)].mean()
    assert no_lesion == 3  # round(12 * (1 - 0.75))


def test_synthetic_binary_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture):
    generate_brats_like(tmp_path / "bin", n_cases=2, shape=SMALL, lesion_fraction=1.0, seg_labels="binary")
    assert set(np.unique(_read(tmp_path / "bin" / "synth_000" / "synth_000_seg.nii.gz")).tolist()) == {0, 1}
    synthetic_main(["--out", str(tmp_path / "cli"), "--n_cases", "2", "--seed", "1", "--shape", "24", "24", "12"])
    output = capsys.readouterr().out
    assert "wrote 2 cases" in output and "labels.csv" in output
    assert len(build_brats_datalist(tmp_path / "cli", list(BRATS_MODALITIES))) == 2


# ----------------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
@pytest.mark.skipif(
    not (REAL_DATA / "lgg").is_dir() or not (REAL_DATA / "brats2015").is_dir(),
    reason=f"real data not found at {REAL_DATA} (lgg/, brats2015/); see shared/data/README.md",
)
@pytest.mark.parametrize("name, label_values", [("lgg", (0, 1)), ("brats2015", (0, 1, 2, 3, 4))])
def test_real_data_slices(name: str, label_values: tuple[int, ...]):
    datalist = build_brats_datalist(REAL_DATA / name, ["flair", "t1ce"])
    assert len(datalist) >= 2
    assert all(r["image"][0].endswith("_flair.nii.gz") and r["seg"] for r in datalist)
    for record in datalist[:2]:
        samples = extract_axial_slices(record, label_values=label_values)
        n_slices = nib.load(record["seg"]).shape[2]
        labels = [s["label"] for s in samples]
        print(
            f"{name} {record['case']}: {n_slices} slices, kept {len(samples)}, brain-free excluded "
            f"{n_slices - len(samples)}, label-1 {sum(labels)}"
        )
        assert sum(labels) > 0 and 0 < len(samples) <= n_slices
        assert all(np.isfinite(s["image"]).all() for s in samples)
