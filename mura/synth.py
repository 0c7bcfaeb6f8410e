"""python -m mura.synth: write a synthetic MURA-v1.1 tree (see conf/synth.yaml)."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from mura.data.synthetic import SyntheticConfig, ensure_synthetic, generate
from mura.errors import exit_on_user_error

log = logging.getLogger(__name__)


def synthesize(cfg: DictConfig) -> str:
    config = SyntheticConfig(**OmegaConf.to_container(cfg.data.synthetic, resolve=True))
    root = generate(cfg.data.root, config) if cfg.force else ensure_synthetic(cfg.data.root, config)
    log.info("synthetic MURA-v1.1 at %s", root)
    return str(root)


@hydra.main(version_base="1.3", config_path="../conf", config_name="synth")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    print(synthesize(cfg))


if __name__ == "__main__":
    main()
