#!/usr/bin/env bash
# Every GPU check of the project in one command, on a GPU machine with no network (goal: at most 6 minutes on
# one H100; its first run, at 65e107c without profile and startup, had not finished the tries after 311 s):
#   1. the GPU-only tests (tests/test_cuda.py: device augmentation CUDA vs CPU; a bf16 fast-path training run
#      whose steady steps are checked in CUDA's sync-debug mode);
#   2. `python -m mura.bench bench_preset=gpu`: synthetic PNGs with MURA's longest side (512), DenseNet-169 at
#      320 px, the paper's recipe against ours; a profile of fit's training step by phase; the time a real
#      `mura.train experiment=all_parts` takes to its first step, first epoch and first Grad-CAM gallery; the
#      tries (fused Adam, batch 256, CUDA graphs, mura.evaluate's path), one table each; last, the startup run
#      again without cuDNN autotuning. The table ends with the seconds each measurement took.
# Fewer measurements: `runs=[profile,startup]`, `runs=[data,train,fit,infer]`; no tries: `'~tries'`.
# bench.json, the table, the logs, the config and startup_runs.tgz (startup/: each startup run's timings.json and
# train.log), 7 files, land in $OUT (the device tool's output folder, which brings back at most 8) or
# outputs/bench_gpu. The bench stops starting measurements after budget_s (420 s in the preset).
#
#   bash benchmarks/fetch_gpu_wheels.sh       # here, with a registry: the packages the GPU image lacks -> .whl/
#   bash benchmarks/gpu_check.sh [OVERRIDES]  # there; extra arguments are Hydra overrides for mura.bench
#
# The package is used from this checkout; wheels in .whl/ (if any) are installed to /tmp/site first.
# REQUIRE_CUDA=0 runs it without a GPU (a smoke test of the script itself, with small overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
out=${OUT:-outputs/bench_gpu}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

"$PYTHON" - <<'PY'
import importlib.util, os, sys
needed = ("torch", "torchvision", "pytorch_lightning", "hydra", "omegaconf", "torchmetrics", "sklearn", "pandas",
          "tabulate", "pytorch_grad_cam", "tqdm", "matplotlib", "pytest")
missing = [name for name in needed if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"missing packages: {missing}; run benchmarks/fetch_gpu_wheels.sh where pip works and carry .whl/")
import torch
if os.environ.get("REQUIRE_CUDA", "1") != "0" and not torch.cuda.is_available():
    sys.exit("no CUDA device visible")
device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print(f"{device} | torch {torch.__version__} | CPU threads {torch.get_num_threads()} | cores {os.cpu_count()}")
PY

# The tests first: if the fast path is broken on CUDA the speed numbers mean nothing. Their failure is
# reported but the bench still runs, so one call measures everything it can.
tests_rc=0
"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/gpu_tests.log" || tests_rc=$?
echo "gpu tests: ${SECONDS} s since the check started"

workers=$(( $(nproc) > 16 ? 16 : $(nproc) ))
data_dir=${TMPDIR:-/tmp}/mura_bench_data   # thousands of PNGs: kept out of $OUT
bench_rc=0
time "$PYTHON" -m mura.bench bench_preset=gpu workers="$workers" synthetic.workers="$workers" \
  paths.data_dir="$data_dir" hydra.run.dir="$out" hydra.output_subdir=null "$@" 2>"$out/bench_stderr.log" | tee "$out/bench_table.md" || bench_rc=$?
[ "$bench_rc" = 0 ] || tail -n 30 "$out/bench_stderr.log"
rm -rf "$data_dir"
# The device tool brings back at most 8 files: the startup runs' timings.json and train.log travel as one archive.
if [ -d "$out/startup" ]; then
  if tar -czf "$out/startup_runs.tgz" -C "$out" startup; then rm -rf "$out/startup"
  else echo "could not pack $out/startup: its files stay as they are" >&2; fi
fi
echo "exit status: gpu tests $tests_rc, bench $bench_rc; ${SECONDS} s in all"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
