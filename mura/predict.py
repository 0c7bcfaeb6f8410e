"""python -m mura.predict ckpt_path=... input=PATH: a JSON line per study (see conf/predict.yaml)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig

from mura.app.errors import ConfigError, exit_on_user_error
from mura.app.run_start import start_run
from mura.evaluation.report import submission_study_path, write_official_predictions
from mura.inference.predictor import pick_device
from mura.inference.study_files import NOT_VIEWS, find_studies, predict_study
from mura.models.checkpoint import load_classifier

log = logging.getLogger(__name__)


def predict(cfg: DictConfig) -> list[dict]:
    try:
        studies = find_studies(cfg.input)
    except FileNotFoundError:
        raise ConfigError(f"input={cfg.input}: no such file or folder (an image, a study folder or a folder of "
                          f"studies; relative to {Path.cwd()})") from None
    if not any(files for _, files in studies):
        not_views = f"hidden files and {', '.join(sorted(NOT_VIEWS))} files are not views"
        if Path(cfg.input).expanduser().is_file():
            raise ConfigError(f"input={cfg.input}: not an image ({not_views}); give an image, a study folder or a folder "
                              "of studies")
        raise ConfigError(f"input={cfg.input}: no files to predict in it ({not_views})")
    model = load_classifier(cfg.ckpt_path, pick_device(cfg.device))
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cam_dir = output_dir / "cam" if cfg.cam else None
    results = []
    with open(output_dir / "predictions.jsonl", "w") as sink:
        for study, files in studies:
            line = predict_study(model, study, files, cam_dir, max_pixels=cfg.max_pixels).as_dict()
            results.append(line)
            text = json.dumps(line)
            sink.write(text + "\n")
            if not print_line(text):
                log.info("stdout was closed after %d study(ies) (`| head`, say); stopping", len(results))
                break
    decided = [line for line in results if line.get("abnormal") is not None]  # a study with an error has no decision
    if not decided and len(results) == len(studies):  # all tried (not cut short by `| head`), none predicted
        raise ConfigError(f"input={cfg.input}: nothing could be predicted: {unpredicted(results)} (each study's "
                          f"reasons are in {output_dir / 'predictions.jsonl'})")
    write_official_predictions(
        output_dir / "predictions_official.csv",
        pd.DataFrame({"study": [submission_study_path(line["study"], cfg.input) for line in decided],
                      "prediction": [int(line["abnormal"]) for line in decided]}),
        root_name=None,
    )
    problems = sum("error" in line or "skipped" in line for line in results)
    log.info("%d study(ies) predicted, %d with problems; written to %s (and predictions_official.csv, Stanford's "
             "submission format)", len(results), problems, output_dir / "predictions.jsonl")
    return results


def unpredicted(results: list[dict], shown: int = 5) -> str:
    """Why studies have no prediction, a file or study and its reason each, for an error message."""
    reasons = [f"{skipped['path']}: {skipped['reason']}" for line in results for skipped in line.get("skipped", [])]
    reasons += [f"{line['study']}: {line['error']}" for line in results if not line.get("skipped")]
    more = f"; and {len(reasons) - shown} more" if len(reasons) > shown else ""
    return "; ".join(reasons[:shown]) + more


def print_line(text: str) -> bool:
    """Print a result line; False once the reader has gone (`mura.predict ... | head`): the user has what they
    asked for, so that is a quiet end, not a BrokenPipeError traceback."""
    try:
        print(text, flush=True)
        return True
    except BrokenPipeError:
        # Python would try to flush stdout again at exit and fail once more: point it at /dev/null instead.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    start_run(cfg)
    predict(cfg)


if __name__ == "__main__":
    main()
