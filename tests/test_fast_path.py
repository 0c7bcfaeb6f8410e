"""The decode-once cache and on-device augmentation compute what the plain path computes."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from mura.data.cache import open_or_build_cache
from mura.data.datamodule import MuraDataModule
from mura.data.device_augment import DeviceAugmentation, affine_matrices
from mura.data.images import load_grayscale
from mura.data.index import MuraDataError
from mura.data.transforms import build_transforms, resize_square


def datamodule(root: Path, tmp_path: Path, **overrides) -> MuraDataModule:
    settings = dict(root=str(root), image_size=40, recipe="paper", channels=3, batch_size=8, num_workers=0,
                    val_fraction=0.3, seed=0, cache_dir=str(tmp_path / "cache"))
    settings.update(overrides)
    module = MuraDataModule(**settings)
    module.setup("fit")
    return module


@pytest.mark.parametrize("recipe", ["paper", "seed"])
def test_cached_evaluation_images_equal_the_plain_path(synthetic_root: Path, tmp_path: Path, recipe: str):
    plain = datamodule(synthetic_root, tmp_path, recipe=recipe).dataset("val", augment=False)
    cached = datamodule(synthetic_root, tmp_path, recipe=recipe, cache=True).dataset("val", augment=False)
    assert cached.cache is not None and len(cached) == len(plain)
    for index in range(0, len(plain), 3):
        assert torch.equal(plain[index]["image"], cached[index]["image"]), plain.paths[index]


@pytest.mark.parametrize("recipe,channels", [("paper", 3), ("paper", 1), ("seed", 1)])
def test_device_normalisation_equals_the_cpu_pipeline(synthetic_root: Path, tmp_path: Path, recipe: str, channels: int):
    raw = datamodule(synthetic_root, tmp_path, recipe=recipe, channels=channels, augment_on_device=True).dataset("val", augment=False)
    plain = datamodule(synthetic_root, tmp_path, recipe=recipe, channels=channels).dataset("val", augment=False)
    batch = torch.stack([raw[i]["image"] for i in range(4)])
    assert batch.dtype == torch.uint8
    on_device = DeviceAugmentation(recipe, channels)(batch, theta=None)
    expected = torch.stack([plain[i]["image"] for i in range(4)])
    assert torch.allclose(on_device, expected, atol=1e-5)


def test_device_augmentation_is_seeded_per_sample_and_identity_without_motion():
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    augment = DeviceAugmentation("paper", 1)
    first = augment(images, augment.matrices([1, 2, 3]))
    assert torch.equal(first, augment(images, augment.matrices([1, 2, 3])))
    assert torch.equal(first[1], augment(images[1:2], augment.matrices([2]))[0])  # independent of the batch around it
    assert not torch.equal(first, augment(images, augment.matrices([4, 5, 6])))
    identity = affine_matrices(torch.tensor([[0.0, 1.0, 0.0, 0.0, 1.0, 1.0]]))
    assert torch.allclose(identity, torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]))
    mirrored = affine_matrices(torch.tensor([[0.0, 1.0, 0.0, 0.0, -1.0, 1.0]]))
    grid = torch.nn.functional.affine_grid(mirrored, [1, 1, 32, 32], align_corners=False)
    flipped = torch.nn.functional.grid_sample(images[:1].float(), grid, align_corners=False)
    assert torch.allclose(flipped, torch.flip(images[:1].float(), dims=[-1]), atol=1e-4)


def test_cache_is_reused_and_rebuilt_when_a_source_changes(writable_root: Path, tmp_path: Path):
    paths = sorted(p.relative_to(writable_root).as_posix() for p in (writable_root / "valid").rglob("image*.png"))[:6]
    cache = open_or_build_cache(writable_root, paths, 32, tmp_path / "cache", workers=1, progress=False)
    assert torch.equal(torch.from_numpy(cache.pixels(2)), resize_square(torch.from_numpy(load_grayscale(writable_root / paths[2]))[None], 32)[0])
    stamp = cache.array_path.stat().st_mtime_ns
    again = open_or_build_cache(writable_root, paths, 32, tmp_path / "cache", workers=1, progress=False)
    assert again.array_path == cache.array_path and again.array_path.stat().st_mtime_ns == stamp
    changed = writable_root / paths[0]
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    rebuilt = open_or_build_cache(writable_root, paths, 32, tmp_path / "cache", workers=1, progress=False)
    assert rebuilt.array_path != cache.array_path
    other_size = open_or_build_cache(writable_root, paths, 24, tmp_path / "cache", workers=1, progress=False)
    assert other_size.pixels(0).shape == (24, 24)


def test_every_fold_split_seed_and_body_part_selection_reads_one_store_of_the_release(synthetic_root: Path, tmp_path: Path):
    """One shard per official split and body part, over every image its CSV lists: the first fold builds them, the other
    folds, another split seed and a subset of body parts open the same files; each image is decoded once."""
    first = datamodule(synthetic_root, tmp_path, cache=True, cv_folds=3, cv_fold=0)
    shards = {path: path.stat().st_mtime_ns for path in (tmp_path / "cache").glob("*.u8")}
    listed = first.splits.assign(official=first.splits["split"].map({"train": "train", "val": "train", "test": "valid"}))
    assert len(shards) == listed.groupby(["official", "body_part"]).ngroups == 14  # 7 body parts, train and valid
    stored = sum(np.memmap(path, dtype=np.uint8, mode="r").size for path in shards) // (40 * 40)
    assert stored == len(first.splits)  # every listed image exactly once
    for others in ({"cv_folds": 3, "cv_fold": 1}, {"cv_folds": 3, "cv_fold": 2}, {"split_seed": 7},
                   {"body_parts": ["XR_WRIST", "XR_HAND"], "cv_folds": 3, "cv_fold": 1}):
        module = datamodule(synthetic_root, tmp_path, cache=True, **others)
        for split in ("train", "val", "test"):
            dataset = module.dataset(split, augment=False)
            index = len(dataset) // 2
            expected = resize_square(torch.from_numpy(load_grayscale(synthetic_root / dataset.paths[index]))[None], 40)[0]
            assert torch.equal(torch.from_numpy(dataset.cache.pixels(dataset.cache_positions[index])), expected)
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "cache").glob("*.u8")} == shards  # nothing rebuilt


def test_a_bad_image_in_the_cache_is_an_error_or_a_skip(writable_root: Path, tmp_path: Path):
    victim = datamodule(writable_root, tmp_path).split_frame("val")["path"].iloc[1]
    (writable_root / victim).write_bytes(b"broken")
    with pytest.raises(MuraDataError, match=f"1 unreadable image.*{victim}: not an image file"):
        datamodule(writable_root, tmp_path, cache=True)
    skipping = datamodule(writable_root, tmp_path, cache=True, on_bad_image="skip")
    assert skipping.skipped == {victim: "not an image file (unrecognised format)"}
    dataset = skipping.dataset("val", augment=False)
    assert victim not in dataset.paths and len(dataset) == len(skipping.split_frame("val"))
    # The cache still holds every listed image's row: the one left out is recorded there as unreadable.
    assert dataset.cache.unreadable() == {victim: "not an image file (unrecognised format)"}
    assert all(dataset[index]["path"] == dataset.paths[index] for index in range(len(dataset)))


def test_an_unreadable_training_image_is_no_error_of_the_validation_split_that_shares_its_shard(writable_root: Path,
                                                                                                tmp_path: Path):
    victim = datamodule(writable_root, tmp_path).split_frame("train")["path"].iloc[0]
    (writable_root / victim).write_bytes(b"broken")
    settings = dict(root=str(writable_root), image_size=40, recipe="paper", channels=3, batch_size=8, num_workers=0,
                    val_fraction=0.3, seed=0, cache_dir=str(tmp_path / "cache"), cache=True)
    MuraDataModule(**settings).setup(splits=("val",))  # mura.evaluate eval.split=val: its images are all readable
    with pytest.raises(MuraDataError, match=f"1 unreadable image.*{victim}"):
        MuraDataModule(**settings).setup(splits=("train",))


def test_jobs_asking_for_one_shard_at_once_decode_it_once(synthetic_root: Path, tmp_path: Path, monkeypatch):
    """The jobs of a sweep start together: the first builds a shard, the others wait for it and open it."""
    from mura.data import cache as cache_module

    builds, real_build = [], cache_module._build

    def slow_build(*args, **kwargs):
        builds.append(1)
        time.sleep(0.5)  # the others arrive while it builds
        return real_build(*args, **kwargs)

    monkeypatch.setattr(cache_module, "_build", slow_build)
    paths = sorted(path.relative_to(synthetic_root).as_posix() for path in synthetic_root.rglob("*.png"))[:6]
    with ThreadPoolExecutor(3) as pool:
        caches = list(pool.map(lambda _: open_or_build_cache(synthetic_root, paths, 24, tmp_path / "cache", workers=1,
                                                             progress=False), range(3)))
    assert len(builds) == 1 and len({cache.array_path for cache in caches}) == 1
    assert all(torch.equal(torch.from_numpy(cache.pixels(5)), torch.from_numpy(caches[0].pixels(5))) for cache in caches)


def test_cache_building_with_workers_matches_one_process(synthetic_root: Path, tmp_path: Path):
    paths = sorted(p.relative_to(synthetic_root).as_posix() for p in (synthetic_root / "valid").rglob("image*.png"))
    single = open_or_build_cache(synthetic_root, paths, 28, tmp_path / "one", workers=1, progress=False)
    several = open_or_build_cache(synthetic_root, paths, 28, tmp_path / "two", workers=2, progress=False)
    assert all((single.pixels(i) == several.pixels(i)).all() for i in range(len(paths)))


def test_resize_step_is_left_out_only_for_cached_images():
    image = torch.zeros(1, 30, 20, dtype=torch.uint8)
    assert build_transforms("paper", 24, 1, train=False, resize=True)(image).shape == (1, 24, 24)
    assert build_transforms("paper", 24, 1, train=False, resize=False)(image).shape == (1, 30, 20)


def test_training_batches_are_warped_on_the_device_and_evaluation_batches_are_not(synthetic_root: Path, tmp_path: Path):
    """The classifier's batch hooks with a real trainer: warp matrices made on the host for training batches only."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from conftest import compose_config, tiny_training_overrides

    cfg = compose_config([*tiny_training_overrides(synthetic_root, tmp_path), "data.augment_on_device=true", "data.cache=true",
                          f"data.cache_dir={tmp_path / 'cache'}"])
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    seen = []
    warp = model.device_augmentation.forward

    def recording_warp(images, theta):
        seen.append((model.trainer.state.stage.value, None if theta is None else tuple(theta.shape), images.dtype))
        return warp(images, theta)

    model.device_augmentation.forward = recording_warp
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    trainer.fit(model, datamodule=datamodule)
    assert [stage for stage, _, _ in seen] == ["train", "train", "validate"]
    assert all(dtype == torch.uint8 for _, _, dtype in seen)  # the loader handed raw images
    assert seen[0][1] == (16, 2, 3) and seen[1][1][1:] == (2, 3) and seen[2][1] is None
