#!/usr/bin/env bash
# The whole speed measurement in one command, on a GPU machine with no network (under 8 minutes on one H100):
# generate realistic synthetic PNGs (longest side 512), run `python -m mura.bench` at full size (DenseNet-169,
# 320 px), print the table. Results land in $OUT (the device tool's output folder) or outputs/bench_gpu.
#
#   bash benchmarks/gpu_check.sh
#
# Needs the package's dependencies importable (torch with CUDA, pytorch-lightning, hydra-core, ...); the package
# itself is used from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
out=${OUT:-outputs/bench_gpu}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PYTHON" - <<'PY'
import importlib, sys
missing = [m for m in ("torch", "torchvision", "pytorch_lightning", "hydra", "torchmetrics", "sklearn", "pandas", "tabulate", "pytorch_grad_cam", "tqdm") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing packages: {missing}; install the project's dependencies first (pip install -e .)")
import torch
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible")
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CPU threads:", torch.get_num_threads())
PY

workers=$(( $(nproc) > 16 ? 16 : $(nproc) ))
time "$PYTHON" -m mura.bench \
  device=cuda backbone=densenet169 image_size=320 channels=3 workers="$workers" \
  synthetic.train_patients_per_part=200 synthetic.valid_patients_per_part=1 synthetic.workers="$workers" \
  data.batch_size=128 \
  train.steps=20 train.warmup=5 train.ours.batch_size=128 \
  fit.batches=25 fit.warmup=5 fit.ours.batch_size=128 \
  infer.steps=20 infer.warmup=5 infer.baseline.batch_size=32 infer.ours.batch_size=256 \
  paths.data_dir="$out/data" hydra.run.dir="$out" 2>"$out/bench_stderr.log"
rm -rf "$out/data"
