"""python -m mura.audit data.root=...: counts, loss weights and data problems, as audit.json and audit.md."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from mura.app.errors import exit_on_user_error
from mura.app.run_start import start_run
from mura.data.audit import AUDIT_MARKDOWN, audit_markdown, audit_release
from mura.data.index import check_root, refuse_writes_inside
from mura.data.synthetic import choose_data_root, ensure_synthetic

log = logging.getLogger(__name__)


def run_audit(cfg: DictConfig) -> dict:
    root, synthetic = choose_data_root(cfg.data.root, OmegaConf.to_container(cfg.data.synthetic, resolve=True)
                                       if cfg.data.get("synthetic") else None)
    if synthetic is not None:
        ensure_synthetic(root, synthetic)
    root = check_root(root)
    refuse_writes_inside(root, {"paths.output_dir": cfg.paths.output_dir})
    audit = audit_release(root, check_pixels=cfg.check_pixels, workers=cfg.workers)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "audit.json").write_text(json.dumps(audit, indent=2))
    (output_dir / AUDIT_MARKDOWN).write_text(audit_markdown(audit))
    log.info("audit written to %s", output_dir)
    return audit


@hydra.main(version_base="1.3", config_path="../conf", config_name="audit")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    start_run(cfg)
    audit = run_audit(cfg)
    print(audit_markdown(audit, max_examples=3))  # a screenful; audit.md lists every problem
    print(f"written to {Path(cfg.paths.output_dir) / AUDIT_MARKDOWN} (every problem) and audit.json")


if __name__ == "__main__":
    main()
