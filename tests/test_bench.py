from __future__ import annotations

import json
from pathlib import Path

from conftest import compose_config
from mura.bench import bench_table, run_bench

TINY_BENCH = ["image_size=32", "workers=0", "data.batch_size=8", "train.steps=1", "fit.batches=1", "fit.warmup=1",
              "infer.steps=1", "train.ours.batch_size=8", "fit.ours.batch_size=8", "infer.ours.batch_size=8"]


def test_bench_writes_every_row_in_the_schema(synthetic_root: Path, tmp_path: Path):
    cfg = compose_config([f"data_root={synthetic_root}", f"paths.output_dir={tmp_path}", f"cache_dir={tmp_path / 'cache'}",
                          *TINY_BENCH], config_name="bench")
    result = run_bench(cfg)
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written == result
    assert written["device"].startswith("cpu")
    kinds = {(row["kind"], row["recipe"]) for row in written["rows"]}
    assert kinds == {(kind, recipe) for kind in ("data", "train", "fit", "infer") for recipe in ("baseline", "ours")}
    for row in written["rows"]:
        assert set(row) == {"kind", "recipe", "images_per_s", "peak_mem_gib", "config"}
        assert row["images_per_s"] > 0 and row["peak_mem_gib"] is None  # no CUDA here
    fit_ours = next(row for row in written["rows"] if row["kind"] == "fit" and row["recipe"] == "ours")
    assert fit_ours["config"]["cache"] and not fit_ours["config"]["augment_on_device"]  # on a CPU the workers augment
    assert "| data" in bench_table(result) and "speed-up" in bench_table(result)
