"""python -m mura.synth: write a synthetic MURA-v1.1 tree (see conf/synth.yaml)."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from mura.app.errors import ConfigError, exit_on_user_error
from mura.app.run_start import start_run
from mura.data.synthetic import choose_data_root, ensure_synthetic, generate

log = logging.getLogger(__name__)


def synthesize(cfg: DictConfig) -> str:
    if cfg.data.get("root"):
        raise ConfigError("mura.synth writes into data.synthetic.dir; data.root names real data, which no command writes: "
                          f"pass data.synthetic.dir={cfg.data.root} to generate there (a new, empty or synthetic folder)")
    root, config = choose_data_root(None, OmegaConf.to_container(cfg.data.synthetic, resolve=True))
    root = generate(root, config) if cfg.force else ensure_synthetic(root, config)
    log.info("synthetic MURA-v1.1 at %s", root)
    return str(root)


@hydra.main(version_base="1.3", config_path="../conf", config_name="synth")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    start_run(cfg)
    print(synthesize(cfg))


if __name__ == "__main__":
    main()
