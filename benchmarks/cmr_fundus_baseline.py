"""Reference baselines of cmr_fundus on a data set's test split, on the bundle's own datalist and patient-level split
(same seed and fractions as train.json/evaluate.json):

- constant: every regression factor predicted as its mean over the training images (the number a model must beat),
  every binary factor's prevalence in the training images;
- ``--thumbnail N``: linear models on N x N RGB thumbnails plus 16-bin colour histograms (ridge regression, L2
  logistic regression), the L2 strength picked on the validation split: what global colour and brightness alone
  predict, i.e. the floor a CNN that learns retinal detail should clear.

    python -m benchmarks.cmr_fundus_baseline --dataset_dir ../shared/data/odir5k --extra_configs odir5k.json
    python -m benchmarks.cmr_fundus_baseline --dataset_dir ../shared/data/odir5k --extra_configs odir5k.json \
        --thumbnail 32
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks.specs import REPO


def main() -> None:
    from monai.bundle import ConfigParser

    from common.metrics import mae, rmse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--extra_configs", nargs="*", default=[], help="config files merged after train.json")
    parser.add_argument("--split", default="test")
    parser.add_argument("--thumbnail", type=int, default=0, help="also fit linear models on N x N thumbnails")
    args = parser.parse_args()
    cfg_dir = REPO / "bundles" / "cmr_fundus" / "configs"
    config = ConfigParser()
    config.read_config([str(cfg_dir / "train.json"), *(str(cfg_dir / c) for c in args.extra_configs)])
    config["dataset_dir"] = args.dataset_dir
    table = config.get_parsed_content("factor_table")
    datalist = config.get_parsed_content("datalist")
    from common.data import select_split

    fractions = (config["val_fraction"], config["test_fraction"], config.get_parsed_content("split_seed"))
    train_records = select_split(datalist, "train", *fractions)
    train = np.stack([r["factors"] for r in train_records])
    test_records = select_split(datalist, args.split, *fractions)
    test = np.stack([r["factors"] for r in test_records])
    out: dict[str, float | int] = {"n_images": len(test_records), "n_patients": len({r["case"] for r in test_records})}
    for k, f in enumerate(table):
        y = test[np.isfinite(test[:, k]), k]
        ref = float(np.nanmean(train[:, k]))
        if f.is_binary:
            out[f"{f.name}_train_prevalence"] = round(ref, 4)
            out[f"{f.name}_{args.split}_prevalence"] = round(float(np.mean(y)), 4) if len(y) else float("nan")
        else:
            out[f"{f.name}_train_mean"] = round(ref, 3)
            out[f"{f.name}_mean_baseline_mae"] = round(mae(np.full_like(y, ref), y), 3)
            out[f"{f.name}_mean_baseline_rmse"] = round(rmse(np.full_like(y, ref), y), 3)
    if args.thumbnail:
        val_records = select_split(datalist, "validation", *fractions)
        out.update(_linear_thumbnail_baseline(table, train_records, val_records, test_records, args.thumbnail))
    print(json.dumps(out, indent=2))


def _thumbnail_features(records: list[dict], size: int) -> np.ndarray:
    from PIL import Image

    rows = []
    for r in records:
        rgb = np.asarray(Image.open(r["image"]).convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255
        hist = [np.histogram(rgb[..., c], bins=16, range=(0, 1))[0] / rgb[..., c].size for c in range(3)]
        rows.append(np.concatenate([rgb.reshape(-1), *hist]))
    return np.stack(rows).astype(np.float64)


def _linear_thumbnail_baseline(table, train_records, val_records, test_records, size: int) -> dict[str, float]:
    """Per factor: ridge (regression) or L2 logistic regression (binary) on thumbnails; L2 picked on validation."""
    import torch

    from common.metrics import case_bootstrap_ci, mae, roc_auc

    feats = {k: _thumbnail_features(r, size) for k, r in
             (("train", train_records), ("val", val_records), ("test", test_records))}
    mu, sd = feats["train"].mean(0), feats["train"].std(0) + 1e-6
    x = {k: (v - mu) / sd for k, v in feats.items()}
    y = {k: np.stack([r["factors"] for r in recs]) for k, recs in
         (("train", train_records), ("val", val_records), ("test", test_records))}
    cases = np.array([r["case"] for r in test_records])
    out: dict[str, float] = {}
    for k, f in enumerate(table):
        ok = {s: np.isfinite(y[s][:, k]) for s in y}
        xt, yt = x["train"][ok["train"]], y["train"][ok["train"], k]
        if len(yt) == 0 or not ok["test"].any():
            continue
        best = None
        for lam in (1e0, 1e1, 1e2, 1e3, 1e4):
            if f.is_binary:
                model = torch.nn.Linear(xt.shape[1], 1).double()
                opt = torch.optim.LBFGS(model.parameters(), max_iter=300)
                xt_t, yt_t = torch.from_numpy(xt), torch.from_numpy(yt)

                def closure(model=model, opt=opt, xt_t=xt_t, yt_t=yt_t, lam=lam):
                    opt.zero_grad()
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xt_t)[:, 0], yt_t)
                    loss = loss + lam / len(yt_t) * (model.weight**2).sum()
                    loss.backward()
                    return loss

                opt.step(closure)

                def predict(a, model=model):
                    return torch.sigmoid(model(torch.from_numpy(a))[:, 0]).detach().numpy()

                val_score = roc_auc(predict(x["val"][ok["val"]]), y["val"][ok["val"], k])
            else:
                w = np.linalg.solve(xt.T @ xt + lam * np.eye(xt.shape[1]), xt.T @ (yt - yt.mean()))

                def predict(a, w=w, b=yt.mean()):
                    return a @ w + b

                val_score = -mae(predict(x["val"][ok["val"]]), y["val"][ok["val"], k])
            if best is None or val_score > best[0]:
                best = (val_score, lam, predict)
        _, lam, predict = best
        pred, truth = predict(x["test"][ok["test"]]), y["test"][ok["test"], k]
        if f.is_binary:
            low, high = case_bootstrap_ci(roc_auc, pred, truth, cases=list(cases[ok["test"]]))
            out[f"{f.name}_thumbnail_auc"] = round(roc_auc(pred, truth), 4)
            out[f"{f.name}_thumbnail_auc_ci_low"] = round(float(low), 4)
            out[f"{f.name}_thumbnail_auc_ci_high"] = round(float(high), 4)
        else:
            out[f"{f.name}_thumbnail_mae"] = round(mae(pred, truth), 3)
        out[f"{f.name}_thumbnail_l2"] = lam
    return out


if __name__ == "__main__":
    main()
