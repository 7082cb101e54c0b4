#!/usr/bin/env bash
# Every GPU check of noisesink in one call (one GPU, CIFAR-10 in NOISESINK_DATA):
#   0. a CUDA smoke trial (catches a broken CUDA path in seconds);
#   1. the accuracy of the resnet18 recipe over 4 seeds, 8 trainings packed on the GPU at once,
#      with the wall time per training, probes included: the sweeps' recipe (18 epochs, peak lr
#      0.2, batch 512) and a shorter one (12 epochs, peak lr 0.4);
#   2. the throughput benchmark: baseline DataLoader/fp32 vs this trainer vs packed/fused k=2,4,8.
# Results (JSON, CSV, logs) go to $OUT (default benchmarks/out). Each stage has its own time limit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
date -u
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())"
"$PY" -c "from study.data import load_cifar10; d = load_cifar10(); print('data', d.kind, d.checksum[:12], d.train_x.shape)"
"$PY" -c "import pytorch_ood" 2>/dev/null || echo "WARNING: pytorch-ood is missing (trials need it): pip install pytorch-ood"

echo "== 0. CUDA smoke"
cat > /tmp/smoke.yaml <<YAML
model: resnet18
epochs: 1
train_subset: 2048
test_subset: 1000
n_noise: 200
n_trajectory: 100
YAML
timeout 60 "$PY" -m study trial /tmp/smoke.yaml --out /tmp/smoke-trial 2>&1 | tail -3
timeout 60 "$PY" -c "
from study.fused import run_fused_trials
r = run_fused_trials([{'model': 'resnet18', 'epochs': 1, 'train_subset': 2048, 'n_noise': 200, 'n_trajectory': 100, 'seed': s} for s in (0, 1)], ['/tmp/f0', '/tmp/f1'], log=lambda m: None)
print('fused smoke', [x['status'] for x in r], [round(x['test_accuracy'], 3) for x in r])" 2>&1 | tail -3

echo "== 1. accuracy: 4 seeds x {18 epochs lr 0.2, 12 epochs lr 0.4}, 8 trainings packed on the GPU"
start=$(date +%s)
for recipe in "18 0.2" "12 0.4"; do
  set -- $recipe
  timeout 330 "$PY" -m study.bench accuracy --seeds 4 --epochs "$1" --lr "$2" --mode packed \
    --out "$OUT/accuracy_e$1.json" > "$OUT/accuracy_e$1.log" 2>&1 &
done
wait
echo "8 trainings in $(( $(date +%s) - start )) s wall"
tail -n 2 "$OUT/accuracy_e18.log" "$OUT/accuracy_e12.log"

echo "== 2. throughput"
timeout 200 "$PY" -m study.bench throughput --out "$OUT/bench.json" 2>&1 | tail -12
