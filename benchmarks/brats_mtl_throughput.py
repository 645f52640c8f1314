"""Training throughput of brats_mtl's network: samples/s for each strategy's step and the MTL/STL step-time ratio.

Builds ``network_def`` from the bundle's train.json (with any ``--override key=value``), then times full training
steps (forward, losses, backward, AdamW step) on random slices of the configured size, for

- ``stl``: classification only (one clean pass),
- ``mtl``: classification + masked image modelling (clean + masked pass, batched together),
- ``mim``: MIM only (masked pass; the pre-training phase of pretrain_finetune).

    python benchmarks/brats_mtl_throughput.py --out benchmarks/results/brats_mtl_throughput.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from common.losses import MaskedMSELoss
from common.transforms import SimMIMMaskd

CFG = Path(__file__).resolve().parents[1] / "bundles" / "brats_mtl" / "configs" / "train.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/brats_mtl_throughput.csv")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--override", nargs="*", default=[], help="key=value overrides of train.json")
    args = parser.parse_args()
    cfg = ConfigParser()
    cfg.read_config(str(CFG))
    for kv in args.override:
        k, v = kv.split("=", 1)
        cfg[k] = type(cfg[k])(v) if cfg.get(k) is not None and not isinstance(cfg[k], bool) else v
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size, bs, c = int(cfg["image_size"]), int(cfg["batch_size"]), len(cfg["modalities"])
    masker = SimMIMMaskd("image", mask_ratio=cfg["mask_ratio"], mask_patch_size=cfg["mask_patch_size"])
    rows = []
    for mode in ("stl", "mtl", "mim"):
        torch.manual_seed(0)
        net = cfg.get_parsed_content("network_def", instantiate=True, lazy=False).to(device).train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        x = torch.randn(bs, c, size, size, device=device)
        y = (torch.rand(bs, 1, device=device) > 0.5).float()
        mask = torch.stack([torch.as_tensor(masker({"image": x[0].cpu()})["mim_mask"]) for _ in range(bs)]).to(device)
        times = []
        for i in range(args.warmup + args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = net(x, None if mode == "stl" else mask, classify=mode != "mim")
            loss = 0.0
            if mode != "mim":
                loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(out["cls"], y)
            if mode != "stl":
                loss = loss + MaskedMSELoss()(out["mim"], x, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        step = sorted(times)[len(times) // 2]
        rows.append({"mode": mode, "batch_size": bs, "image_size": size, "median_step_s": round(step, 4),
                     "samples_per_s": round(bs / step, 1), "device": str(device), "threads": torch.get_num_threads(),
                     "cpu": platform.processor() or platform.machine(),
                     "params": sum(p.numel() for p in net.parameters())})
    stl = rows[0]["median_step_s"]
    for r in rows:
        r["step_time_vs_stl"] = round(r["median_step_s"] / stl, 2)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
