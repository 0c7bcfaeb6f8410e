"""MuraDataModule: index once, split by patient, serve dict batches that carry study ids."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import DataLoader

from mura.data.cache import ImageCache, ShardedImageCache, open_or_build_shards
from mura.data.dataset import MuraImageDataset, collate_samples
from mura.data.index import (
    BODY_PARTS,
    OFFICIAL_SPLITS,
    MuraDataError,
    build_index,
    check_root,
    parse_body_parts,
    refuse_writes_inside,
)
from mura.data.loader_workers import stop_loader_workers
from mura.data.sampling import SeededSampler
from mura.data.split import (
    SPLIT_ORDER,
    SPLITS_CSV_COLUMNS,
    assign_fold,
    assign_splits,
    check_folds,
    check_no_leak,
    split_definition,
    split_mismatch,
    split_table,
)
from mura.data.study_batches import STUDY_MODELS, STUDY_POOLINGS, MuraStudyDataset, collate_studies
from mura.data.synthetic import choose_data_root, ensure_synthetic
from mura.data.transforms import RESIZE_MODES, ResizeSquare, build_transforms
from mura.data.verify import find_unreadable

log = logging.getLogger(__name__)

# The splits whose images a stage reads. Fitting checks the test images too: a run tests its best checkpoint
# after training, and an unreadable test image must stop it before the first step, not after the last.
SPLITS_OF_STAGE = {"fit": SPLIT_ORDER, None: SPLIT_ORDER, "validate": ("val",), "test": ("test",), "predict": ("test",)}
SKIPPED_IMAGES_FILE = "skipped_images.txt"
# The official CSV each split's images come from: training and validation (a share or a fold) from train, test from valid.
OFFICIAL_SPLIT_OF = {"train": "train", "val": "train", "test": "valid"}


class MuraDataModule(pl.LightningDataModule):
    """Study-aware data for MURA.

    Args:
        root: the MURA-v1.1 folder (the one holding the four CSVs): real data, read and never written.
        body_parts: "all" or a list such as ["XR_WRIST"].
        synthetic: settings for `mura.data.synthetic.SyntheticConfig` plus `dir`, used only when `root` is None:
            a synthetic release is generated in `dir` on first use and reused afterwards.
        splits_dir: where `setup` writes `splits.csv` and `split_table.md` (the run folder); None skips it.
        seed: the order of the training images and their augmentation (mura.data.sampling).
        split_seed: which patients go to validation; None: `seed`. Fixing it while `seed` varies trains an
            ensemble whose members differ in initialisation, order and augmentation but share one validation split.
        cv_folds, cv_fold: validate on fold `cv_fold` of `cv_folds` patient-grouped folds of the official train
            split (stratified by body part and label) instead of a `val_fraction` share.
        resize: the first step's "squash" (the paper) or "pad" (keep the aspect ratio), mura.data.transforms.
        on_bad_image: "error" stops `setup` at the first unreadable listed image (before any training step);
            "skip" leaves such images out, counted, listed and written to `skipped_images.txt`.
        cache: decode and resize every image once into a memory-mapped file under `cache_dir` (mura.data.cache).
        augment_on_device: hand out resized uint8 images; the model augments and normalises whole batches on
            its device (mura.data.device_augment).
        study_pooling: the model's (mura.models.study_pooling): "mean", a view model, gets batches of images; "max"
            and "attention", study models, get batches of whole studies (`batch_size` studies, mura.data.study_batches),
            a training study of more than `study_max_views` views drawing that many each epoch.
    """

    def __init__(
        self,
        root: str | None,
        body_parts: str | list[str] = "all",
        image_size: int = 320,
        resize: str = "squash",
        recipe: str = "paper",
        channels: int = 3,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        val_fraction: float = 0.1,
        cv_folds: int | None = None,
        cv_fold: int | None = None,
        seed: int = 0,
        split_seed: int | None = None,
        on_bad_image: str = "error",
        pin_memory: bool = False,
        persistent_workers: bool = True,
        cache: bool = False,
        cache_dir: str | None = None,
        augment_on_device: bool = False,
        synthetic: dict[str, Any] | None = None,
        splits_dir: str | None = None,
        study_pooling: str = "mean",
        study_max_views: int | None = 4,
    ):
        super().__init__()
        if resize not in RESIZE_MODES:
            raise MuraDataError(f"data.resize must be one of {RESIZE_MODES}, not {resize!r}")
        if cache and not cache_dir:
            raise MuraDataError("data.cache=true needs data.cache_dir: a folder outside data.root for the decoded images")
        self.root, self.synthetic = choose_data_root(root, synthetic)
        self.body_parts = parse_body_parts(body_parts)
        self.image_size = image_size
        self.resize = resize
        self.recipe = recipe
        self.channels = channels
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.cv_folds, self.cv_fold = check_folds(cv_folds, cv_fold)
        self.seed = seed
        self.split_seed = seed if split_seed is None else split_seed
        self.on_bad_image = on_bad_image
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.cache = cache
        self.cache_dir = cache_dir
        self.augment_on_device = augment_on_device
        if study_pooling not in STUDY_POOLINGS:
            raise MuraDataError(f"model.study_pooling must be one of {STUDY_POOLINGS}, not {study_pooling!r}")
        self.study_batches = study_pooling in STUDY_MODELS
        self.study_max_views = study_max_views
        self._caches: dict[str, ShardedImageCache] = {}
        self._cache_shards: dict[tuple[str, str], ImageCache] = {}  # (official split, body part) -> its opened shard
        self._listed: pd.DataFrame | None = None
        self.splits_dir = splits_dir
        self.splits: pd.DataFrame | None = None
        self.studies: pd.DataFrame | None = None
        self.split_definition: dict[str, Any] | None = None
        self.skipped: dict[str, str] = {}  # unreadable images left out (data.on_bad_image=skip): path -> reason
        self._checked: set[str] = set()
        self._resume_from: tuple[int, int] | None = None  # (epoch, batches done) of the checkpoint a fit resumes from

    # -- Lightning hooks ---------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Generate the synthetic release if asked, then check that the root and its four CSVs exist and that
        nothing would be written inside the root, once, before any worker or process starts (the full per-row
        checks run in `setup`)."""
        if self.synthetic is not None:
            ensure_synthetic(self.root, self.synthetic)
        root = check_root(self.root)
        for split in OFFICIAL_SPLITS:
            for kind in ("image_paths", "labeled_studies"):
                if not (root / f"{split}_{kind}.csv").is_file():
                    raise MuraDataError(f"{root / f'{split}_{kind}.csv'}: missing; data.root must be the MURA-v1.1 folder itself")
        refuse_writes_inside(root, {"data.cache_dir": self.cache_dir, "data.splits_dir (the run folder)": self.splits_dir})

    def setup(self, stage: str | None = None, splits: tuple[str, ...] | None = None) -> None:
        """Index, split by patient, and check every image of the splits `stage` reads (or `splits`, for callers
        without a Trainer, such as `mura.evaluate`): an unreadable one stops here, before any training step."""
        if self.splits is None:
            # A Trainer calls `prepare_data` first; notebooks and `mura.evaluate` use the module without one.
            self.prepare_data()
            self._index_and_split()
        self._check_images(splits or SPLITS_OF_STAGE.get(stage, SPLIT_ORDER))

    def _index_and_split(self) -> None:
        # With skip, listed files missing from disk stay in the table: they go through the split like the others
        # (so it does not depend on which files are missing) and are left out, counted and listed, below.
        index = build_index(self.root, "all", on_bad_image=self.on_bad_image, keep_missing=self.on_bad_image == "skip")
        # The patients' split is drawn over every body part before any is selected: it depends on the release
        # and the split settings alone, so a wrist run and an all-parts run with one split seed share their
        # validation patients, and a wrist run's training patients never reach another run's validation.
        if self.cv_folds:
            splits = assign_fold(index, self.cv_folds, self.cv_fold, self.split_seed)
        else:
            splits = assign_splits(index, self.val_fraction, self.split_seed)
        check_no_leak(splits)
        self.split_definition = split_definition(splits, self.split_seed, self.val_fraction, self.cv_folds, self.cv_fold)
        splits = splits[splits["body_part"].isin(self.body_parts)]
        if not (splits["split"] == "train").any():
            raise MuraDataError(
                f"{self.root}: the train split has no images for body parts {self.body_parts}; "
                "check train_image_paths.csv and data.body_parts"
            )
        self._listed = splits.reset_index(drop=True)  # every listed image of the selected body parts
        self._set_splits(self._listed)
        table = split_table(self.splits)
        log.info("split table (%s):\n%s", self.root, table.to_string(index=False))
        if self.splits_dir is not None and self._is_first_process():
            self.write_splits(self.splits_dir, table)

    def _set_splits(self, splits: pd.DataFrame) -> None:
        splits = splits.reset_index(drop=True)
        # Study, patient and image indices are global and fixed here, so study-level metrics (and the bootstrap
        # over patients) stay exact under shuffling, several workers and several processes.
        splits["study_idx"] = pd.factorize(splits["study"])[0]
        splits["patient_idx"] = pd.factorize(splits["patient"])[0]
        splits["image_idx"] = range(len(splits))
        self.splits = splits
        self.studies = (
            splits.groupby("study_idx", sort=True)
            .agg(study=("study", "first"), split=("split", "first"), body_part=("body_part", "first"),
                 patient=("patient", "first"), label=("label", "first"), n_views=("path", "size"))
        )

    def _check_images(self, splits: tuple[str, ...]) -> None:
        """Every listed image of `splits`, once: decoded into the cache when it is on, else checked cheaply
        (headers and chunks, mura.data.verify). Under several processes the first finds, the others are told."""
        wanted = [split for split in splits if split not in self._checked and self.has_split(split)]
        if not wanted:
            return
        unreadable = None
        if self._is_first_process():
            try:
                unreadable = self._find_unreadable(wanted)
            except Exception as error:  # noqa: BLE001 - handed to every process, so none waits for an answer forever
                unreadable = error
        unreadable = self._broadcast(unreadable)
        if isinstance(unreadable, Exception):
            raise unreadable
        if self.cache:
            for split in wanted:  # built by the first process above; the others open it
                self.image_cache(split)
        self._checked.update(wanted)
        if not unreadable:
            return
        examples = "; ".join(f"{path}: {reason}" for path, reason in list(unreadable.items())[:3])
        if self.on_bad_image == "error":
            raise MuraDataError(
                f"{len(unreadable)} unreadable image(s) under {self.root} in the {'/'.join(wanted)} split(s); first: "
                f"{examples}. Replace them from the original archive, or set data.on_bad_image=skip to leave them out "
                "(counted and listed); `python -m mura.audit` lists every data problem"
            )
        self.skipped.update(unreadable)
        log.warning("%d unreadable image(s) left out (data.on_bad_image=skip): %s", len(unreadable), examples)
        self._set_splits(self._listed[~self._listed["path"].isin(self.skipped)])
        if self.splits_dir is not None and self._is_first_process():
            self.write_splits(self.splits_dir, split_table(self.splits))
            (Path(self.splits_dir) / SKIPPED_IMAGES_FILE).write_text("".join(f"{path}\n" for path in sorted(self.skipped)))

    def _find_unreadable(self, splits: list[str]) -> dict[str, str]:
        if self.cache:
            # A shard holds the other splits' images of its CSV and body part too: only these splits' count here
            wanted = set(self._listed.loc[self._listed["split"].isin(splits), "path"])
            return {path: reason for split in splits for path, reason in self.image_cache(split).unreadable().items()
                    if path in wanted}
        paths = self._listed.loc[self._listed["split"].isin(splits), "path"].tolist()
        return find_unreadable(self.root, paths, workers=max(1, self.num_workers), desc=f"checking {len(paths)} images")

    def _is_first_process(self) -> bool:
        return self.trainer is None or self.trainer.is_global_zero

    def _broadcast(self, value):
        if self.trainer is None or self.trainer.world_size == 1:
            return value
        return self.trainer.strategy.broadcast(value, src=0)

    def on_exception(self, exception: BaseException) -> None:
        """Lightning's hook for a fit, test or validation that ends in an exception (Ctrl-C and SIGTERM included),
        called while the loaders are still at hand: their worker processes are stopped now (`stop_loader_workers`)."""
        if self.trainer is not None:
            stop_loader_workers(self.trainer)

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: what defines the run's split, so `mura.evaluate` rebuilds the same one, and,
        while fitting, where a fit resumed from it goes on (`resume_position`)."""
        state: dict[str, Any] = {"split": self._split_state()} if self.split_definition else {}
        if self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            epoch, batches_done = resume_position(self.trainer)
            state["resume"] = {"epoch": epoch, "batches_done": batches_done}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """On resume: the run must go on with the split and the body parts it started with, and its train loader
        starts where the checkpoint says (`train_dataloader`)."""
        saved = state_dict.get("split")
        mismatch = split_mismatch(saved, self._split_state()) if saved and self.split_definition else None
        if mismatch:
            raise MuraDataError(f"cannot resume from this checkpoint: {mismatch}; resume with the settings and data it was "
                                "trained with")
        if self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING and "resume" in state_dict:
            self._resume_from = (int(state_dict["resume"]["epoch"]), int(state_dict["resume"]["batches_done"]))

    def _split_state(self) -> dict[str, Any]:
        return {**self.split_definition, "body_parts": list(self.body_parts)}

    # -- what the rest of the package asks for -----------------------------------------------------------

    def write_splits(self, directory: str | Path, table: pd.DataFrame) -> None:
        """splits.csv (a row per image) and the split table (`split_table(self.splits)`) as CSV and Markdown."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.splits[SPLITS_CSV_COLUMNS].to_csv(directory / "splits.csv", index=False)
        table.to_csv(directory / "split_table.csv", index=False)
        (directory / "split_table.md").write_text(table.to_markdown(index=False) + "\n")

    def split_frame(self, split: str) -> pd.DataFrame:
        self._require_setup()
        return self.splits[self.splits["split"] == split]

    def has_split(self, split: str) -> bool:
        return not self.split_frame(split).empty

    def train_image_counts(self) -> dict[str, dict[str, int]]:
        """Normal and abnormal image counts per body part in the training split (for the paper's loss weights)."""
        train = self.split_frame("train")
        counts = {}
        for body_part in BODY_PARTS:
            labels = train.loc[train["body_part"] == body_part, "label"]
            counts[body_part] = {"normal": int((labels == 0).sum()), "abnormal": int((labels == 1).sum())}
        return counts

    def train_study_counts(self) -> dict[str, dict[str, int]]:
        """Normal and abnormal study counts per body part in the training split (a study model's loss weights)."""
        train = self.studies[self.studies["split"] == "train"]
        return {part: {"normal": int(((train["body_part"] == part) & (train["label"] == 0)).sum()),
                       "abnormal": int(((train["body_part"] == part) & (train["label"] == 1)).sum())}
                for part in BODY_PARTS}

    def dataset(self, split: str, augment: bool) -> MuraImageDataset | MuraStudyDataset:
        frame = self.split_frame(split)
        if frame.empty:
            raise MuraDataError(_empty_split_message(split, self.root, self.body_parts, self.cv_folds))
        self._check_images((split,))  # a no-op for a split `setup` checked
        frame = self.split_frame(split)  # without the images a skip has just left out
        cache = self.image_cache(split) if self.cache else None
        if self.augment_on_device:  # uint8 out, resized: the model augments and normalises on its device
            transform = None if cache is not None else ResizeSquare(self.image_size, self.resize)
        else:
            transform = build_transforms(self.recipe, self.image_size, self.channels, train=augment, resize=cache is None,
                                         resize_mode=self.resize)
        images = MuraImageDataset(frame, self.root, transform, on_bad_image=self.on_bad_image, cache=cache)
        return MuraStudyDataset(images, frame, self.study_max_views) if self.study_batches else images

    def image_cache(self, split: str) -> ShardedImageCache:
        """The split's decode-once cache: the shards (official split x body part, mura.data.cache) its images lie in,
        each over every listed image of its CSV and body part (skipped ones included), so that every fold, split seed
        and selection of body parts of the release reads and builds the same shards."""
        if split not in self._caches:
            listed = self._listed.assign(official=self._listed["split"].map(OFFICIAL_SPLIT_OF))
            groups = {group: frame["path"].tolist() for group, frame in listed.groupby(["official", "body_part"], sort=True)}
            wanted = sorted(set(zip(*(listed.loc[listed["split"] == split, column] for column in ("official", "body_part")),
                                    strict=True)))
            self._caches[split] = open_or_build_shards(
                self.root, groups, wanted, self.image_size, self.cache_dir, workers=max(1, self.num_workers),
                resize_mode=self.resize, opened=self._cache_shards,
            )
        return self._caches[split]

    def dataloader(self, split: str, shuffle: bool | None = None, train_transforms: bool | None = None) -> DataLoader:
        """Batches of one split; by default the train split is shuffled and augmented, the others are not."""
        is_train = split == "train"
        augment = is_train if train_transforms is None else train_transforms
        shuffle = is_train if shuffle is None else shuffle
        dataset = self.dataset(split, augment)
        training = is_train and shuffle  # not an evaluation of the train split (mura.evaluate eval.split=train)
        batch_size = self.batch_size if training else self.eval_batch_size
        # One batch shape per loader: a new shape makes cuDNN's autotuning start over (epoch 0 took 57 s against
        # 2 s for later ones on an H100). Training drops its last partial batch (another order next epoch, so no
        # image is left out for good); evaluation repeats a few images to fill its last one (counted once).
        sampler = SeededSampler(len(dataset), self.seed, shuffle=shuffle, augment=augment,
                                pad_to_multiple=1 if training else batch_size)
        drop_last = training and len(sampler) > batch_size  # this process's share: under DDP, 1/world of the split
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=collate_studies if self.study_batches else collate_samples,
            drop_last=drop_last,
        )

    def train_dataloader(self) -> DataLoader:
        loader = self.dataloader("train")
        # Lightning starts the loader's iterator before it calls set_epoch, and worker processes draw their first
        # indices at once: a run resumed at epoch 3 trained its first epoch on epoch 0's order and augmentation, and
        # so ended with other numbers than the run never interrupted. The sampler starts where the fit resumes.
        # That position comes from the checkpoint (restored into this module before the model's configure_optimizers
        # runs) rather than from the fit loop's counters, which are restored after it: a per-step schedule reads
        # trainer.estimated_stepping_batches there, which builds and starts this loader, and the loop's counters then
        # still said "epoch 0, nothing done" (a resumed warm-up-cosine run trained on epoch 0's batches again).
        if self._resume_from is not None:
            (epoch, batches_done), self._resume_from = self._resume_from, None  # once: a reload later starts whole
        else:  # a new fit, or a checkpoint of an earlier version, which recorded no position
            epoch, batches_done = resume_position(self.trainer) if self.trainer is not None else (0, 0)
        loader.sampler.resume_at(epoch, batches_done * loader.batch_size)
        return loader

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    def _require_setup(self) -> None:
        if self.splits is None:
            raise RuntimeError("MuraDataModule.setup() has not run yet")


def resume_position(trainer: pl.Trainer) -> tuple[int, int]:
    """(the epoch the fit runs next, the batches of it already trained): (0, 0) for a new fit, (E + 1, 0) after a
    checkpoint from the end of epoch E, (E, k) after one from inside epoch E (SIGTERM, Ctrl-C, a preemption).

    From the fit loop's progress counters, as its restart logic reads them: Lightning cannot restart a data loader
    mid-epoch, and without this it drew the resumed epoch's remaining batches from the epoch's start again."""
    epochs = trainer.fit_loop.epoch_progress.current
    if epochs.started == epochs.processed:  # between epochs: the next one starts whole
        return epochs.processed, 0
    batches = trainer.fit_loop.epoch_loop.batch_progress
    done = batches.current.completed
    total = batches.total
    if total.ready == total.started == total.processed == total.completed + 1:
        done += 1  # saved inside on_train_batch_end: Lightning counts that batch as done when it restarts
    if batches.is_last_batch and total.ready == total.processed:
        # every batch of the epoch was trained on (stopped in its end-of-epoch validation, or in the last batch's
        # on_train_batch_end): the next epoch starts whole; skipping the epoch's length would empty it
        return epochs.processed + 1, 0
    return epochs.processed, done


def _empty_split_message(split: str, root: str | None, body_parts: list[str], cv_folds: int | None = None) -> str:
    if split == "test":
        return (
            f"{root}: there is nothing to test on: valid_image_paths.csv lists no images for {body_parts} "
            "(the official valid split is the test set)"
        )
    if split == "val" and cv_folds:
        return (f"{root}: this fold of {cv_folds} holds no validation images for {body_parts}: use fewer folds "
                "(data.cv_folds), or more body parts")
    if split == "val":
        return f"{root}: the validation split is empty; raise data.val_fraction (now too small for {body_parts})"
    return f"{root}: the {split} split has no images for {body_parts}"

