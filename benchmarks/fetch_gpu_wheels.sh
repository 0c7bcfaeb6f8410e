#!/usr/bin/env bash
# Here, where pip reaches a registry: build the wheels of the pure-Python packages that the GPU machine's image
# lacks (it has torch, torchvision, pytorch-lightning, torchmetrics, scikit-learn, pandas, pytest, ...; see the
# device tool's KINDS.md) into .whl/, which benchmarks/gpu_check.sh installs there. Versions: as tested here.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir .whl
# pip wheel: grad-cam and antlr4 are published as source only; all five are pure Python (py3-none-any).
python3 -m pip wheel -q --no-deps -w .whl \
  hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 grad-cam==1.5.7 ttach==0.0.3
ls .whl
