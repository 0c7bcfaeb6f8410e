"""Image probabilities from one model or an ensemble, without a Trainer (plain loop, inference mode)."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mura.data.index import BODY_PARTS
from mura.data.study_batches import per_view
from mura.models.classifier import MuraClassifier

log = logging.getLogger(__name__)


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_bf16(device: torch.device, bf16: bool, cache_enabled: bool = True):
    """bf16 autocast on CUDA when asked; a no-op elsewhere (bf16 autocast slows CPU convolutions)."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache_enabled)
    return contextlib.nullcontext()


def predict_images(
    model: MuraClassifier,
    loader: DataLoader,
    tta_flip: bool = False,
    bf16: bool = True,
    progress: bool = True,
) -> tuple[pd.DataFrame, list[str]]:
    """A row per image (image_idx, study_idx, patient, body_part, label, logit, probability) and the skipped paths.

    With `tta_flip` the probability is the mean of the image's and its mirror image's (horizontal flip, the
    paper's training augmentation); `logit` is then the logit of that mean.
    """
    device = next(model.parameters()).device
    rows, skipped = [], []
    with torch.inference_mode(), autocast_bf16(device, bf16):
        for batch in tqdm(loader, desc="predicting", unit="batch", disable=not progress):
            skipped.extend(batch.get("skipped", []))
            if batch["image"] is None:
                continue
            images = batch["image"].to(device, non_blocking=True)
            if images.dtype == torch.uint8:  # data.augment_on_device: normalised here, on the device
                images = model.preprocess(images)
            # float64 sigmoid of the float32 logit: the same numbers training's test step reports. A study model's
            # views each carry their study's (MuraClassifier.batch_logits).
            probability = torch.sigmoid(model.batch_logits({**batch, "image": images})[1].double())
            if tta_flip:
                flipped = {**batch, "image": torch.flip(images, dims=[-1])}
                probability = (probability + torch.sigmoid(model.batch_logits(flipped)[1].double())) / 2
            rows.append(
                pd.DataFrame(
                    {
                        "image_idx": batch["image_idx"].numpy(),
                        "study_idx": per_view(batch, "study_idx").numpy(),
                        "patient": per_view(batch, "patient_idx").numpy(),
                        "body_part": [BODY_PARTS[i] for i in per_view(batch, "body_part_idx").tolist()],
                        "label": per_view(batch, "label").numpy().astype(int),
                        "probability": probability.cpu().numpy(),
                    }
                )
            )
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["image_idx", "study_idx", "patient", "body_part", "label", "probability"])
    # The loader fills its last batch with repeated images (one batch shape): each image counts once.
    frame = frame.drop_duplicates("image_idx", ignore_index=True)
    skipped = list(dict.fromkeys(skipped))
    frame["logit"] = _logit(frame["probability"].to_numpy(dtype=np.float64))
    return frame, skipped


def average_ensemble(predictions: list[pd.DataFrame]) -> pd.DataFrame:
    """Mean image probability over models (the paper's ensemble), aligned on image_idx."""
    if len(predictions) == 1:
        return predictions[0]
    base = predictions[0].set_index("image_idx").sort_index()
    stacked = np.stack([frame.set_index("image_idx").loc[base.index, "probability"].to_numpy() for frame in predictions])
    result = base.copy()
    result["probability"] = stacked.mean(axis=0)
    result["logit"] = _logit(result["probability"].to_numpy())
    return result.reset_index()


def _logit(probability: np.ndarray) -> np.ndarray:
    clipped = np.clip(probability, 1e-12, 1 - 1e-12)
    return np.log(clipped) - np.log1p(-clipped)
