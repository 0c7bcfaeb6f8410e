"""python -m mura.bench: data pipeline, model-only training, end-to-end fit and inference throughput,
the paper's recipe (baseline) against ours, with peak GPU memory; then the time a real `mura.train` takes to its
first step, first epoch and first Grad-CAM gallery; writes bench.json (see conf/bench.yaml)."""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from pathlib import Path

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from mura.app.errors import ConfigError, exit_on_user_error
from mura.app.run_start import start_run
from mura.benchmarking import measurements
from mura.benchmarking.startup import measure_sharing, measure_startup
from mura.benchmarking.step_profile import measure_profile
from mura.data.index import refuse_writes_inside
from mura.data.synthetic import SyntheticConfig, ensure_synthetic
from mura.inference.predictor import pick_device

log = logging.getLogger(__name__)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


MAIN_KINDS = ("data", "train", "fit", "infer")
STARTUP = "startup"  # ours only, in a table of its own: seconds, not images per second
PROFILE = "profile"  # ours only, fit's settings: milliseconds per step by phase, in a table of its own
SHARE = "share"  # two real trainings at once against one alone: seconds and ratios, in a table of its own
KINDS = (*MAIN_KINDS, PROFILE, STARTUP, SHARE)  # mura.evaluate's path is an infer try with end_to_end: true


def run_bench(cfg: DictConfig) -> dict:
    """Every measurement in cfg.runs, in measurement_plan's order, until budget_s is spent. bench.json is rewritten
    after each one, so a run stopped part-way keeps what it measured; a measurement that fails is logged and listed
    under not_measured, and the others go on."""
    bench_started = time.perf_counter()
    plan = measurement_plan(cfg)  # a mistyped measurement fails here, before any data is made
    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # for both recipes alike, so only what the recipes name differs
    root = cfg.data_root
    seconds = []
    if root is None:
        root = ensure_synthetic(Path(cfg.paths.data_dir) / "bench" / "MURA-v1.1",
                                SyntheticConfig(**OmegaConf.to_container(cfg.synthetic, resolve=True)))
        seconds.append({"measurement": "synthetic data", "seconds": round(time.perf_counter() - bench_started, 1)})
    root = Path(root)
    cache_dir = Path(cfg.cache_dir)
    refuse_writes_inside(root, {"paths.output_dir": cfg.paths.output_dir, "cache_dir": cache_dir})
    common = {"image_size": cfg.image_size, "channels": cfg.channels, "device": device}
    measures = {
        "data": lambda recipe, settings: measurements.measure_data(root, recipe, batch_size=settings["batch_size"], workers=cfg.workers,
                                                            cache_dir=cache_dir, **common),
        "train": lambda recipe, settings: measurements.measure_train_step(cfg.backbone, steps=cfg.train.steps, warmup=cfg.train.warmup,
                                                                   recipe_name=recipe, **settings, **common),
        "fit": lambda recipe, settings: measurements.measure_fit(root, recipe, cfg.backbone, workers=cfg.workers, batches=cfg.fit.batches,
                                                          warmup=cfg.fit.warmup, cache_dir=cache_dir, **settings, **common),
        "infer": lambda recipe, settings: measurements.measure_inference(cfg.backbone, steps=cfg.infer.steps, warmup=cfg.infer.warmup,
                                                                  recipe_name=recipe, **settings, **common),
        "evaluate": lambda recipe, settings: measurements.measure_evaluation(root, recipe, cfg.backbone, workers=cfg.workers,
                                                                      cache_dir=cache_dir, **settings, **common),
        STARTUP: lambda recipe, settings: measure_startup(root, cache_dir, Path(cfg.paths.output_dir), **settings),
        SHARE: lambda recipe, settings: measure_sharing(root, cache_dir, **settings),
        PROFILE: lambda recipe, settings: measure_profile(root, recipe, cfg.backbone, workers=cfg.workers, cache_dir=cache_dir,
                                                          **settings, **common),
    }

    result = {"device": device_name(device), "rows": [], "not_measured": [], "seconds": seconds}
    output_path = Path(cfg.paths.output_dir) / "bench.json"
    output_path.parent.mkdir(parents=True, exist_ok=True)
    for kind, recipe, variant, settings in plan:
        label = f"{kind}/{recipe}" + (f"/{variant}" if variant else "")
        remaining = cfg.budget_s - (time.perf_counter() - bench_started) if cfg.budget_s else math.inf
        if remaining <= 0:
            result["not_measured"].append({"kind": kind, "recipe": recipe, "variant": variant,
                                           "reason": f"budget_s ({cfg.budget_s} s) spent before it started"})
            continue
        log.info("measuring %s", label)
        started = time.perf_counter()
        try:
            # end_to_end: an inference row measured through mura.evaluate's own path, from the image files.
            measure = measures["evaluate" if settings.pop("end_to_end", False) else kind]
            if kind == STARTUP:
                settings["variant"] = variant
            if kind in (STARTUP, SHARE):
                settings["timeout_s"] = min(settings["timeout_s"], remaining)
            measured = measure(recipe, settings)
        except measurements.NeedsCuda as exc:
            result["not_measured"].append({"kind": kind, "recipe": recipe, "variant": variant, "reason": str(exc)})
        except Exception as exc:  # one broken measurement must not lose the others (a GPU run is one command)
            log.exception("%s failed", label)
            result["not_measured"].append({"kind": kind, "recipe": recipe, "variant": variant,
                                           "reason": f"{type(exc).__name__}: {exc}"})
        else:
            if variant:
                measured["config"]["variant"] = variant
            result["rows"].append(measured)
        # What the whole measurement cost, setup, warm-up and cuDNN autotuning included: where a bench's time goes.
        result["seconds"].append({"measurement": label, "seconds": round(time.perf_counter() - started, 1)})
        output_path.write_text(json.dumps(result, indent=2))
    return result


def measurement_plan(cfg: DictConfig) -> list[tuple[str, str, str | None, dict]]:
    """(kind, recipe, try name or None, settings) of every measurement in cfg.runs, in the order they run: when
    budget_s may cut the end, the main table and the profile first, then the startup run (three of issue #11's goals
    are its figures), then the tries, and last the startup variants, a whole training run each. The startup run is a
    process of its own that has ended before the tries start; they are compared with `ours` rows measured before it."""
    runs = [cfg.runs] if isinstance(cfg.runs, str) else list(cfg.runs)  # runs=fit as well as runs=[fit]
    try_kinds = {name: settings.kind for name, settings in (cfg.get("tries") or {}).items()}
    unknown = [name for name in runs if name not in KINDS] + [f"{kind} (tries.{name}.kind)" for name, kind in
                                                               try_kinds.items() if kind not in KINDS]
    if unknown:
        raise ConfigError(f"runs: no measurement called {', '.join(map(str, unknown))}; the measurements are {', '.join(KINDS)}")
    plan = [(kind, recipe, None, _settings(cfg, kind, recipe)) for recipe in ("baseline", "ours") for kind in MAIN_KINDS
            if kind in runs]
    if PROFILE in runs:
        plan.append((PROFILE, "ours", None, {**_settings(cfg, "fit", "ours"), **OmegaConf.to_container(cfg.profile, resolve=True)}))
    for kind in (STARTUP, SHARE):
        if kind in runs:
            plan.append((kind, "ours", None, _settings(cfg, kind, "ours")))
    for name, try_settings in (cfg.get("tries") or {}).items():
        settings = OmegaConf.to_container(try_settings, resolve=True)
        kind = settings.pop("kind")
        if kind in runs:
            plan.append((kind, "ours", name, {**_settings(cfg, kind, "ours"), **settings}))
    plan.sort(key=lambda entry: 2 * (entry[2] is not None) + (entry[0] in (STARTUP, SHARE)))
    if not plan:
        raise ConfigError(f"runs={runs} selects no measurement; the measurements are {', '.join(KINDS)}")
    return plan


def _settings(cfg: DictConfig, kind: str, recipe: str) -> dict:
    """A recipe's settings for one kind of measurement; the data pipeline has one batch size for both, and startup
    measures ours only."""
    if kind == "data":
        return {"batch_size": cfg.data.batch_size}
    if kind in (STARTUP, SHARE):
        return OmegaConf.to_container(cfg[kind], resolve=True)
    return OmegaConf.to_container(cfg[kind][recipe], resolve=True)


def bench_table(result: dict) -> str:
    """The recipes side by side, then each try against `ours` of its kind, then what was not measured."""
    frame = pd.DataFrame([row for row in result["rows"] if row["kind"] in MAIN_KINDS])
    lines = [f"device: {result['device']}"]
    if not frame.empty:
        variant = frame["config"].map(lambda config: config.get("variant"))
        main = frame[variant.isna()]
        wide = main.pivot(index="kind", columns="recipe", values="images_per_s").reindex(
            [kind for kind in MAIN_KINDS if kind in set(main["kind"])])
        memory = main.pivot(index="kind", columns="recipe", values="peak_mem_gib").reindex(wide.index)
        wide, memory = wide.reindex(columns=["baseline", "ours"]), memory.reindex(columns=["baseline", "ours"])
        lines.append(pd.DataFrame({
            "baseline img/s": wide["baseline"], "ours img/s": wide["ours"], "speed-up": (wide["ours"] / wide["baseline"]).round(2),
            "baseline peak GiB": memory["baseline"], "ours peak GiB": memory["ours"],
        }).to_markdown())
        tries = frame[variant.notna()]
        if not tries.empty:
            ours = wide["ours"]
            lines.append("\ntries (variants of ours):\n" + pd.DataFrame({
                "try": variant[variant.notna()], "kind": tries["kind"], "img/s": tries["images_per_s"],
                "vs ours": (tries["images_per_s"] / tries["kind"].map(ours)).round(2), "peak GiB": tries["peak_mem_gib"],
            }).to_markdown(index=False))
    for row in result["rows"]:
        if row["kind"] == PROFILE:
            lines.append("\n" + profile_table(row))
        if row["kind"] == STARTUP:
            lines.append("\n" + startup_table(row))
        if row["kind"] == SHARE:
            lines.append("\n" + share_table(row))
    for missing in result["not_measured"]:
        name = "/".join(part for part in (missing["kind"], missing["recipe"], missing["variant"]) if part)
        lines.append(f"not measured: {name}: {missing['reason']}")
    if result.get("seconds"):
        spent = ", ".join(f"{entry['measurement']} {entry['seconds']:g}" for entry in result["seconds"])
        total = sum(entry["seconds"] for entry in result["seconds"])
        lines.append(f"\nwhere the time went, in seconds (setup and cuDNN autotuning included): {spent}; {total:.0f} s in all")
    return "\n".join(lines)


def profile_table(row: dict) -> str:
    """A steady-state training step of fit (ours), by phase (mura/benchmarking/step_profile.py)."""
    phases = pd.Series(row["phases_ms_per_step"])
    title = (f"profile: one training step of fit (ours, batch {row['config']['batch_size']}), phases timed between device "
             f"synchronisations ({row['images_per_s']} img/s profiled; the fit row is the unprofiled speed)")
    return title + "\n" + pd.DataFrame({"ms per step": phases, "share": (phases / phases.sum()).map("{:.1%}".format)}).to_markdown()


def startup_table(row: dict) -> str:
    """The time-to-first-result figures of one measured `mura.train` run, each beside issue #11's goal."""
    figures = [
        (f"{row['origin']} to first optimizer step (s)", row["first_step_s"], "<= 15"),
        *((f"- {phase} (s)", seconds, "") for phase, seconds in (row["to_first_step"] or {}).items()),
        ("epoch 0 training (s)", row["first_epoch_train_s"], ""),
        ("later epoch training, median (s)", row["steady_epoch_train_s"], ""),
        ("epoch 0 / later epoch", row["first_epoch_vs_steady"], "<= 1.5"),
        ("epoch 0 minus later epoch (s)", row["first_epoch_extra_s"], ""),
        ("first Grad-CAM gallery (s)", row["first_gallery_s"], "<= 5"),
        ("later gallery, median (s)", row["later_gallery_s"], "<= 5"),
        ("validation / later epoch training", row["validation_vs_steady_epoch"], "<= 0.1"),
        ("test (checkpoint loading included) / later epoch training", row["test_vs_steady_epoch"], "<= 0.1"),
        ("final Grad-CAM gallery, then the test reports (s)",
         " + ".join(str(row["after_fit"].get(key, "-")) for key in ("final_gallery_s", "reports_s")), ""),
        ("whole run, wall (s)", row["wall_s"], ""),
    ]
    command = " ".join([*row["config"]["overrides"], *row["config"]["extra_overrides"]])
    name = row["config"].get("variant") or "startup"
    table = pd.DataFrame(figures, columns=[f"{name}: mura.train {command}", "measured", "goal"])
    return table.to_markdown(index=False)


def share_table(row: dict) -> str:
    """Two `mura.train` jobs at once against one alone, beside issue #20's goals."""
    figures = [
        ("one job alone, wall (s)", row["alone_s"], ""),
        ("two jobs at once, wall until both ended (s)", row["two_at_once_s"], ""),
        ("two at once / one alone", row["two_at_once_vs_alone"], "<= 1.5 ideally"),
        ("two at once / the two one after the other", row["two_at_once_vs_one_after_the_other"], "<= 1"),
    ]
    command = " ".join(row["config"]["overrides"])
    return pd.DataFrame(figures, columns=[f"share: mura.train {command}", "measured", "goal"]).to_markdown(index=False)


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    start_run(cfg)
    result = run_bench(cfg)
    print(bench_table(result))
    print(f"\nwritten to {Path(cfg.paths.output_dir) / 'bench.json'}")


if __name__ == "__main__":
    main()
