#!/usr/bin/env bash
# `make demo`: the three tasks end to end on bundled synthetic data, with the real runners,
# dataset classes, pipelines and metrics (CocoMetric, IoUMetric, Accuracy):
#   1. tools/generate_demo_data.py writes data/demo/{coco,ade,imagenet};
#   2. for Mask R-CNN, Semantic FPN and the classifier (configs/*/demo/, a tiny SPANet):
#      tools/test.py on the untrained model (baseline), tools/train.py, tools/test.py on the
#      trained model with --show-dir (painted predictions);
#   3. a table of bbox/segm mAP, mIoU and top-1 before and after training.
# CPU only, a few minutes per task. Outputs: work_dirs/demo/<task>/.
# Environment: PYTHON (default .venv/bin/python), DEMO_TASKS (default "det seg cls").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
TASKS=${DEMO_TASKS:-det seg cls}
OUT=work_dirs/demo
# One thread per process: far faster than OpenMP threads competing on a busy or small machine.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}

config_of() {
    case $1 in
        det) echo configs/detection/demo/mask_rcnn_spanet_demo.py ;;
        seg) echo configs/segmentation/demo/fpn_spanet_demo.py ;;
        cls) echo configs/classification/demo/spanet_demo_cls.py ;;
    esac
}

# The model as training starts (same seed, same init), saved as a checkpoint for the baseline.
save_untrained() {
    "$PYTHON" - "$1" "$2" <<'EOF'
import sys
import torch
from mmengine.config import Config
from mmengine.runner import set_random_seed
from spanet_mm.apis import init_model
config, out = sys.argv[1:]
set_random_seed(Config.fromfile(config).get('randomness', {}).get('seed', 0))
model = init_model(config)
torch.save({'state_dict': model.state_dict(), 'meta': {'note': 'untrained'}}, out)
EOF
}

log() { echo -e "\n=== $* ===" >&2; }

log "Generating the synthetic datasets under data/demo"
"$PYTHON" tools/generate_demo_data.py --out data/demo

for task in $TASKS; do
    config=$(config_of "$task")
    dir=$OUT/$task
    rm -rf "$dir"
    mkdir -p "$dir"
    log "[$task] untrained baseline: tools/test.py $config"
    save_untrained "$config" "$dir/untrained.pth" > "$dir/untrained.log" 2>&1 \
        || { tail -30 "$dir/untrained.log"; exit 1; }
    "$PYTHON" tools/test.py "$config" "$dir/untrained.pth" --work-dir "$dir/test_untrained" \
        > "$dir/test_untrained.log" 2>&1 || { tail -30 "$dir/test_untrained.log"; exit 1; }
    log "[$task] training: tools/train.py $config (log: $dir/train.log)"
    start=$(date +%s)
    "$PYTHON" tools/train.py "$config" --work-dir "$dir/train" \
        > "$dir/train.log" 2>&1 || { tail -30 "$dir/train.log"; exit 1; }
    echo "trained in $(( $(date +%s) - start )) s" >&2
    checkpoint=$(cat "$dir/train/last_checkpoint")
    log "[$task] trained model: tools/test.py --show-dir $dir/vis"
    "$PYTHON" tools/test.py "$config" "$checkpoint" --work-dir "$dir/test_trained" \
        --show-dir "$dir/vis" > "$dir/test_trained.log" 2>&1 \
        || { tail -30 "$dir/test_trained.log"; exit 1; }
done

log "Results (untrained -> trained), on the validation splits"
"$PYTHON" - $TASKS <<'EOF'
import json
import sys
keys = {'det': ['coco/bbox_mAP', 'coco/segm_mAP'], 'seg': ['mIoU'], 'cls': ['accuracy/top1']}
names = {'det': 'Mask R-CNN', 'seg': 'Semantic FPN', 'cls': 'Classifier'}
for task in sys.argv[1:]:
    before, after = (json.load(open(f'work_dirs/demo/{task}/test_{s}/test_metrics.json'))
                     for s in ('untrained', 'trained'))
    for key in keys[task]:
        print(f'{names[task]:13s} {key:15s} {before[key]:8.3f} -> {after[key]:8.3f}')
    print(f'{"":13s} painted predictions: work_dirs/demo/{task}/vis')
EOF
