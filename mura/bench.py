"""python -m mura.bench: data pipeline, model-only training, end-to-end fit and inference throughput,
the paper's recipe (baseline) against ours, with peak GPU memory; writes bench.json (see conf/bench.yaml)."""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from mura import speed
from mura.data.synthetic import SyntheticConfig, ensure_synthetic
from mura.errors import exit_on_user_error
from mura.evaluation.inference import pick_device

log = logging.getLogger(__name__)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def run_bench(cfg: DictConfig) -> dict:
    device = pick_device(cfg.device)
    root = cfg.data_root
    if root is None:
        root = ensure_synthetic(Path(cfg.paths.data_dir) / "bench" / "MURA-v1.1",
                                SyntheticConfig(**OmegaConf.to_container(cfg.synthetic, resolve=True)))
    root = Path(root)
    cache_dir = Path(cfg.cache_dir)
    common = {"image_size": cfg.image_size, "channels": cfg.channels, "device": device}
    rows = []
    for recipe in ("baseline", "ours"):
        if "data" in cfg.runs:
            rows.append(speed.measure_data(root, recipe, batch_size=cfg.data.batch_size, workers=cfg.workers,
                                           cache_dir=cache_dir, **common))
        if "train" in cfg.runs:
            rows.append(speed.measure_train_step(cfg.backbone, steps=cfg.train.steps, warmup=cfg.train.warmup,
                                                 recipe_name=recipe, **cfg.train[recipe], **common))
        if "fit" in cfg.runs:
            rows.append(speed.measure_fit(root, recipe, cfg.backbone, workers=cfg.workers, batches=cfg.fit.batches,
                                          warmup=cfg.fit.warmup, cache_dir=cache_dir, **cfg.fit[recipe], **common))
        if "infer" in cfg.runs:
            rows.append(speed.measure_inference(cfg.backbone, steps=cfg.infer.steps, warmup=cfg.infer.warmup,
                                                recipe_name=recipe, **cfg.infer[recipe], **common))
    result = {"device": device_name(device), "rows": rows}
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "bench.json").write_text(json.dumps(result, indent=2))
    return result


def bench_table(result: dict) -> str:
    frame = pd.DataFrame(result["rows"])
    wide = frame.pivot(index="kind", columns="recipe", values="images_per_s").reindex(["data", "train", "fit", "infer"]).dropna(how="all")
    memory = frame.pivot(index="kind", columns="recipe", values="peak_mem_gib").reindex(wide.index)
    table = pd.DataFrame({
        "baseline img/s": wide["baseline"], "ours img/s": wide["ours"], "speed-up": (wide["ours"] / wide["baseline"]).round(2),
        "baseline peak GiB": memory["baseline"], "ours peak GiB": memory["ours"],
    })
    return f"device: {result['device']}\n" + table.to_markdown()


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    result = run_bench(cfg)
    print(bench_table(result))
    print(f"\nwritten to {Path(cfg.paths.output_dir) / 'bench.json'}")


if __name__ == "__main__":
    main()
