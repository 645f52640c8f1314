#!/usr/bin/env bash
# The README's main job: install, generate the embedded synthetic data sets (BraTS-style volumes, fundus
# photographs with disc/cup masks, fundus photographs with risk factors), then run the brats_mtl,
# glioma_seg_idh, fundus_glaucoma and cmr_fundus bundles' train -> evaluate -> inference with the monai.bundle CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# shellcheck disable=SC1091
. .venv/bin/activate
DATA="${DEMO_DATA:-data/brats_demo}"
python -m common.data.synthetic --out "$DATA" --n_cases 24 --seed 0
B=bundles/brats_mtl/configs
python -m monai.bundle run --config_file "$B/train.json" --dataset_dir "$DATA" --epochs "${DEMO_EPOCHS:-6}" --resume false
python -m monai.bundle run --config_file "['$B/train.json','$B/evaluate.json']" --dataset_dir "$DATA" --eval_split test
python -m monai.bundle run --config_file "$B/inference.json" --dataset_dir "$DATA"
echo
echo "checkpoint:   bundles/brats_mtl/models/model.pt"
echo "metrics:      bundles/brats_mtl/eval/metrics.json"
cat bundles/brats_mtl/eval/metrics.json; echo
echo "predictions:  bundles/brats_mtl/predictions/predictions.csv and bundles/brats_mtl/predictions/overlays/*.png"

G=bundles/glioma_seg_idh/configs
python -m monai.bundle run --config_file "$G/train.json" --dataset_dir "$DATA" --epochs "${DEMO_GLIOMA_EPOCHS:-20}" \
    --val_interval 10 --resume false --progress_bar false
python -m monai.bundle run --config_file "['$G/train.json','$G/evaluate.json']" --dataset_dir "$DATA" --eval_split test
python -m monai.bundle run --config_file "$G/inference.json" --dataset_dir "$DATA"
echo
echo "checkpoint:   bundles/glioma_seg_idh/models/model.pt"
echo "metrics:      bundles/glioma_seg_idh/eval/metrics.json"
cat bundles/glioma_seg_idh/eval/metrics.json; echo
echo "predictions:  bundles/glioma_seg_idh/predictions/<case>/<case>_seg.nii.gz and predictions.csv"

FDATA="${DEMO_FUNDUS_DATA:-data/fundus_demo}"
python -m common.data.synthetic_fundus --out "$FDATA" --n_images 24 --seed 0
F=bundles/fundus_glaucoma/configs
python -m monai.bundle run --config_file "$F/train.json" --dataset_dir "$FDATA" --locator_epochs "${DEMO_FUNDUS_EPOCHS:-20}" \
    --epochs "${DEMO_FUNDUS_EPOCHS:-20}" --val_interval 10 --resume false --progress_bar false
python -m monai.bundle run --config_file "['$F/train.json','$F/evaluate.json']" --dataset_dir "$FDATA" --eval_split test
python -m monai.bundle run --config_file "$F/inference.json" --dataset_dir "$FDATA"
echo
echo "checkpoints:  bundles/fundus_glaucoma/models/locator.pt, model.pt, glaucoma_score.json"
echo "metrics:      bundles/fundus_glaucoma/eval/metrics.json"
cat bundles/fundus_glaucoma/eval/metrics.json; echo
echo "predictions:  bundles/fundus_glaucoma/predictions/<image>/<image>_{disc,cup,overlay}.png and predictions.csv"

F=bundles/cmr_fundus/configs
CDATA="${DEMO_CMR_DATA:-data/cmr_fundus_demo}"
python -m common.data.synthetic_cmr --out "$CDATA" --n_patients 40 --seed 0
python -m monai.bundle run --config_file "$F/train.json" --dataset_dir "$CDATA" --epochs "${DEMO_CMR_EPOCHS:-8}" \
    --resume false --progress_bar false
python -m monai.bundle run --config_file "['$F/train.json','$F/evaluate.json']" --dataset_dir "$CDATA" --eval_split test
python -m monai.bundle run --config_file "$F/inference.json" --dataset_dir "$CDATA"
echo
echo "checkpoint:   bundles/cmr_fundus/models/model.pt"
echo "metrics:      bundles/cmr_fundus/eval/metrics.json"
cat bundles/cmr_fundus/eval/metrics.json; echo
echo "predictions:  bundles/cmr_fundus/predictions/predictions.csv"
