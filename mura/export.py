"""python -m mura.export ckpt_path=... [format=onnx]: the network as one file, its contract beside it (conf/export.yaml)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mura.app.errors import exit_on_user_error
from mura.app.run_start import start_run
from mura.inference.export import ExportMismatchError, export_with_contract
from mura.models.checkpoint import load_classifier

log = logging.getLogger(__name__)


def export(cfg: DictConfig) -> tuple[Path, Path]:
    """The model file and its JSON contract, written to `cfg.output` and checked against PyTorch."""
    model = load_classifier(cfg.ckpt_path)
    model_path, contract_path = export_with_contract(
        model, cfg.ckpt_path, cfg.output, cfg.format, check_images=cfg.check_images if cfg.check else 0, tolerance=cfg.tolerance
    )
    print(f"model: {model_path}\ncontract: {contract_path}", flush=True)
    return model_path, contract_path


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    start_run(cfg)
    try:
        export(cfg)
    except ExportMismatchError as error:
        log.error("%s", error)
        sys.exit(1)


if __name__ == "__main__":
    main()
