"""MuraClassifier: a backbone with one logit, the paper's weighted BCE, and study-level metrics each epoch."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from mura import __version__
from mura.app.errors import ConfigError
from mura.data.device_augment import DeviceAugmentation
from mura.data.index import BODY_PARTS
from mura.data.study_batches import STUDY_MODELS, STUDY_POOLINGS, per_view
from mura.data.transforms import build_transforms
from mura.evaluation.metrics import BOOTSTRAP_REPLICATES, flatten_for_logging, format_metric, metrics_report
from mura.evaluation.store import PredictionStore, first_occurrence, predictions_frame
from mura.models.backbones import build_backbone, classifier_head, view_embedding
from mura.models.loss import StudyTypeWeightedBCE
from mura.models.loss_watch import DeferredLossCheck
from mura.models.study_pooling import StudyPooling
from mura.models.weight_averaging import EMAOnceUpdated

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


class MuraClassifier(pl.LightningModule):
    """Args are plain values (saved in checkpoints) plus optimizer and scheduler factories (not saved).

    `image_size`, `in_channels`, `recipe` and `resize` describe the input the network expects, so `mura.evaluate`,
    `mura.predict` and the Grad-CAM gallery rebuild the right preprocessing from a checkpoint alone
    (`eval_transform`).

    `ema`: {"decay": 0.999, "start_step": 0} keeps an exponential moving average of the weights (Lightning's
    `EMAWeightAveraging`, BatchNorm statistics averaged too, mura.models.weight_averaging); the averaged weights are
    the ones validated, checkpointed, tested and explained, from the first update on (the live weights before it).
    None: off.
    `scheduler_interval`: "epoch", or "step" for schedulers stepped every optimizer step; a step scheduler's factory
    also receives `total_steps` and `steps_per_epoch` (mura.models.schedules).
    `study_pooling`: "mean", a view model (each view trained on its study's label, view probabilities averaged per
    study afterwards: the paper); "max" or "attention", a study model (batches of whole studies, the views pooled
    into one study logit inside the network and trained on the study label, mura.models.study_pooling), whose loss
    weights come from the training split's study counts. `attention_dim`: the attention network's hidden size.
    A study model's prediction rows are still one per view, each carrying its study's logit, so every table, report
    and comparison reads it as it reads a view model's (its study probability is that logit's).
    """

    def __init__(
        self,
        backbone: str = "densenet_small",
        in_channels: int = 3,
        image_size: int = 320,
        recipe: str = "paper",
        resize: str = "squash",
        pretrained: bool = False,
        weights_path: str | None = None,
        loss_weighted: bool = True,
        threshold: float = 0.5,
        channels_last: bool = False,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_monitor: str = "val/loss",
        scheduler_interval: str = "epoch",
        ema: dict[str, Any] | None = None,
        study_pooling: str = "mean",
        attention_dim: int = 128,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        if study_pooling not in STUDY_POOLINGS:
            raise ConfigError(f"model.study_pooling must be one of {STUDY_POOLINGS}, not {study_pooling!r}")
        self.network = build_backbone(backbone, in_channels, image_size, pretrained, weights_path)
        if channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self.pooling = None
        if study_pooling in STUDY_MODELS:
            head = classifier_head(self.network)
            if not isinstance(head, torch.nn.Linear):
                raise ConfigError(f"model.study_pooling={study_pooling} needs a backbone whose classifier head is one "
                                  f"linear layer over its embedding; {backbone}'s is a {type(head).__name__}")
            self.pooling = StudyPooling(study_pooling, head.in_features, attention_dim)
        self.criterion = StudyTypeWeightedBCE(BODY_PARTS, weighted=loss_weighted)
        self.device_augmentation = DeviceAugmentation(recipe, in_channels)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # One store per stage (attributes: nn.Module already has a `train` method, so no ModuleDict keys).
        self.train_store, self.val_store, self.test_store = PredictionStore(), PredictionStore(), PredictionStore()
        self.skipped_images: set[str] = set()  # unreadable images left out (data.on_bad_image=skip)
        self.loss_check = DeferredLossCheck()
        self.reports: dict[str, dict] = {}
        self.predictions: dict[str, pd.DataFrame] = {}
        self.validated_at_step: int | None = None  # the optimizer step of the fit's latest validation

    # -- forward and steps ---------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.network(images).squeeze(1)

    @property
    def is_study_model(self) -> bool:
        return self.pooling is not None

    def study_forward(self, images: torch.Tensor, view_study: torch.Tensor, view_position: torch.Tensor,
                      studies: int, views: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A study model's (study logits (B), each view's weight in its study (N)) for N views of B studies."""
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        embeddings = view_embedding(self.network, images)
        view_study, view_position = view_study.to(images.device), view_position.to(images.device)
        return self.pooling(embeddings, view_study, view_position, studies, classifier_head(self.network), views)

    def score_study(self, views: torch.Tensor) -> tuple[float, np.ndarray, np.ndarray]:
        """One study's (probability, each view's probability on its own, each view's weight in the study) from its
        V views as network input (V x C x S x S): a view model's study probability is its views' mean (each weighs
        1/V); a study model's is its pooled logit's, its weights the pooling's (attention, or 1 on max's view)."""
        with torch.inference_mode():
            view_probabilities = torch.sigmoid(self(views).double()).cpu().numpy()
            if not self.is_study_model:
                return float(np.mean(view_probabilities)), view_probabilities, np.full(len(views), 1 / len(views))
            count = torch.arange(len(views), device=views.device)
            logits, weights = self.study_forward(views, torch.zeros_like(count), count, 1, len(views))
        return float(torch.sigmoid(logits.double())[0]), view_probabilities, weights.double().cpu().numpy()

    def batch_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(the logits the loss reads, one per study of a study batch or per image of an image batch; one logit per
        image of the batch, a study batch's views carrying their study's)."""
        if "view_study" not in batch:
            logits = self(batch["image"])
            return logits, logits
        logits, _ = self.study_forward(batch["image"], batch["view_study"], batch["view_position"], len(batch["label"]),
                                       batch.get("views"))
        return logits, logits[batch["view_study"]]

    def preprocess(self, images: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Resized uint8 batches (data.augment_on_device=true) to network input, warped by `theta` when given."""
        return self.device_augmentation(images, theta)

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # The warp parameters are made here, from the host copy of the seeds: reading them after the transfer
        # (a .tolist() of a device tensor) would make every step wait for the previous one to finish.
        images = batch.get("image")
        if images is not None and images.dtype == torch.uint8 and self.trainer.training:
            seeds = batch["augment_seed"]
            if len(seeds) and int(seeds.min()) >= 0:
                batch["augment_theta"] = self.device_augmentation.matrices(seeds.tolist())
        return batch

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        images = batch.get("image")
        if images is not None and images.dtype == torch.uint8:
            batch["image"] = self.preprocess(images, batch.pop("augment_theta", None))
        return batch

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and datamodule is not None:
            if self.is_study_model != datamodule.study_batches:
                raise ConfigError(f"model.study_pooling={self.hparams.study_pooling} needs "
                                  f"{'study' if self.is_study_model else 'image'} batches: leave data.study_pooling "
                                  "to follow the model's")
            # A study model learns from studies: its weights balance the studies it is trained on, as the paper's
            # balance the images a view model is trained on.
            counts = datamodule.train_study_counts() if self.is_study_model else datamodule.train_image_counts()
            self.criterion.set_weights_from_counts(counts)
            # The body parts trained on: a part without training images keeps a weight no image uses.
            weights = {part: round(float(w), 4) for part, w in zip(BODY_PARTS, self.criterion.w_abnormal, strict=True)
                       if sum(counts[part].values())}
            log.info("loss weights w_abnormal per body part (from %s counts): %s",
                     "study" if self.is_study_model else "image", weights)
            if self.is_study_model:
                studies = sum(sum(part.values()) for part in counts.values())
                views = sum(sum(part.values()) for part in datamodule.train_image_counts().values()) / max(studies, 1)
                log.info("a study model: data.batch_size=%d counts studies, about %d images a batch at the training "
                         "split's %.2f views a study", datamodule.batch_size, round(datamodule.batch_size * views), views)

    def _shared_step(self, batch: dict, stage: str) -> torch.Tensor | None:
        self.skipped_images.update(batch.get("skipped", []))
        if batch["image"] is None:
            return None
        logits, image_logits = self.batch_logits(batch)
        loss = self.criterion(logits, batch["label"], batch["body_part_idx"])
        self._store(stage).update(batch["image_idx"], per_view(batch, "study_idx"), per_view(batch, "patient_idx"),
                                  per_view(batch, "body_part_idx"), per_view(batch, "label"), image_logits)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        self.loss_check.check()  # the previous step's
        loss = self._shared_step(batch, "train")
        if loss is not None:
            where = f"epoch {self.current_epoch}, global step {self.global_step}, batch {batch_idx} (first image {batch['path'][0]})"
            self.loss_check.defer(loss, where)
            # The loggers get every step's loss tensor (read every trainer.log_every_n_steps); the progress bar, which
            # would read it every step, shows the last checked value instead, a step behind and free.
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, batch_size=len(batch["label"]))
            if self.loss_check.last_value is not None:
                # A host tensor: Lightning would put a float on the device, and the bar's read of it would wait.
                self.log("loss", torch.tensor(self.loss_check.last_value), on_step=True, on_epoch=False, prog_bar=True, logger=False,
                         batch_size=len(batch["label"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    # -- epoch ends: exact, de-duplicated, study-level -----------------------------------------------------

    def _store(self, stage: str) -> PredictionStore:
        return getattr(self, f"{stage}_store")

    def _finish_stage(self, stage: str) -> None:
        store = self._store(stage)
        if not store.has_rows:
            store.reset()
            return
        columns = store.compute()
        store.reset()
        images = predictions_frame(columns)
        # The loss the model trains on: per image for a view model, per study for a study model (whose rows are its
        # studies' views, each carrying the study's logit: one row a study, or a 4-view study would count 4 times).
        rows = first_occurrence(columns["study_idx"])[1] if self.is_study_model else slice(None)
        logits = columns["logit"][rows].to(self.device)
        loss = self.criterion(logits, columns["label"][rows].to(self.device), columns["body_part_idx"][rows].to(self.device))
        # Confidence intervals (a bootstrap over patients) for the test table only: per-epoch logging needs none.
        report = metrics_report(images, threshold=self.hparams.threshold, bootstrap=BOOTSTRAP_REPLICATES if stage == "test" else 0)
        self.reports[stage] = report
        self.predictions[stage] = images
        if stage == "val" and self.trainer.state.fn == TrainerFn.FITTING:
            self.validated_at_step = self.global_step
        # Every process computed these from the same gathered predictions: averaging them changes nothing,
        # and keeps every rank's logged values (which checkpointing and early stopping read) in step.
        self.log(f"{stage}/loss", loss.item(), prog_bar=stage != "train", sync_dist=True)
        self.log_dict(flatten_for_logging(report, stage), sync_dist=True)
        if stage != "train":
            study = report["study"]["overall"]
            scored = f"epoch {self.current_epoch} {stage}"
            if self.trainer.state.fn != TrainerFn.FITTING:  # the checkpoint scored (mura.train's selected one), not
                what = "test" if stage == "test" else "validation"  # the epoch the trainer is at
                scored = f"{what} of the weights in memory"
                if self.trainer.ckpt_path:
                    from mura.models.checkpoint import checkpoint_epoch  # here: that module imports this one

                    scored = f"{what} of {Path(self.trainer.ckpt_path).name} (epoch {checkpoint_epoch(self.trainer.ckpt_path)})"
            log.info("%s: loss %.4f, study kappa %s, study AUROC %s (%d studies)", scored, loss.item(),
                     format_metric(study["kappa"]), format_metric(study["auroc"]), study["n"])

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_store.reset()
            return
        # Validation runs after the epoch's training batches: finishing "train" here puts both stages' epoch
        # metrics in callback_metrics before callbacks draw curves (Lightning calls callbacks before the module).
        self._finish_stage("train")
        self._finish_stage("val")

    def on_validation_start(self) -> None:
        # Before validation, so a NaN from the epoch's last step never reaches an end-of-epoch checkpoint.
        self.loss_check.check()

    def on_train_epoch_end(self) -> None:
        self.loss_check.check()
        self._finish_stage("train")  # a no-op when validation already finished it

    def on_test_epoch_end(self) -> None:
        self._finish_stage("test")

    def all_skipped_images(self) -> list[str]:
        """The images every process skipped, gathered (call it on all ranks under DDP)."""
        skipped = set(self.skipped_images)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, sorted(skipped))
            skipped = set().union(*gathered)
        return sorted(skipped)

    # -- optimisation and checkpoints ----------------------------------------------------------------------

    def eval_transform(self, resize: bool = True):
        """The deterministic preprocessing this network expects, from raw uint8 1 x H x W images; `resize=False`
        for images already at the network's size (the exported model's input)."""
        hparams = self.hparams
        return build_transforms(hparams.recipe, hparams.image_size, hparams.in_channels, train=False, resize=resize,
                                resize_mode=hparams.resize)

    def configure_callbacks(self) -> list[pl.Callback]:
        """The model's own training callbacks: weight averaging when `ema` asks for it."""
        ema = self.hparams.ema
        # Fitting only: testing or validating a checkpoint reads the averaged weights it already holds.
        if not ema or ema.get("decay") is None or self.trainer.state.fn != TrainerFn.FITTING:
            return []
        return [EMAOnceUpdated(decay=float(ema["decay"]), update_starting_at_step=int(ema.get("start_step") or 0))]

    def configure_optimizers(self):
        factory = self.optimizer_factory or (lambda params: torch.optim.Adam(params, lr=1e-4))
        optimizer = factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        interval = self.hparams.scheduler_interval
        if interval == "step":
            total_steps = self.trainer.estimated_stepping_batches  # also sets up the training loader
            if not math.isfinite(total_steps):
                raise ValueError("a schedule stepped per step needs a length: set trainer.max_epochs or trainer.max_steps")
            per_epoch = math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches)
            scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=int(total_steps),
                                               steps_per_epoch=max(1, min(per_epoch, int(total_steps))))
        elif interval == "epoch":
            scheduler = self.scheduler_factory(optimizer=optimizer)
        else:
            raise ValueError(f"model.scheduler_interval must be epoch or step, not {interval!r}")
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.hparams.scheduler_monitor, "interval": interval},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The global torch RNG drives dropout; with it restored, a resumed run continues exactly (the data
        # order and augmentation are already functions of (seed, epoch, index), see mura.data.sampling).
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["mura"] = {"version": __version__, "format": CHECKPOINT_FORMAT, "rng": rng}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("mura", {}).get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
