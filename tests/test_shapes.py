"""One batch shape per loader, and no cuDNN autotuning for Grad-CAM: on a GPU each new input shape starts
cuDNN's autotuning over (issue #11: epoch 0 and the first gallery took 57 s each on an H100, later ones 2 s)."""

from __future__ import annotations

from pathlib import Path

import torch

from mura.data.datamodule import MuraDataModule
from mura.data.sampling import SeededSampler
from mura.evaluation.store import PredictionStore


def test_every_batch_of_a_loader_has_one_shape_and_every_image_counts_once(synthetic_root: Path):
    module = MuraDataModule(root=str(synthetic_root), image_size=32, batch_size=16, eval_batch_size=8, num_workers=0,
                            val_fraction=0.3)
    module.setup("fit")
    train_sizes = [len(batch["label"]) for batch in module.train_dataloader()]
    assert len(module.split_frame("train")) % 16 and set(train_sizes) == {16}  # the partial last batch is dropped
    seen_next_epoch = set()
    for epoch in range(1, 6):
        loader = module.train_dataloader()
        loader.sampler.set_epoch(epoch)
        seen_next_epoch |= {path for batch in loader for path in batch["path"]}
    assert seen_next_epoch == set(module.split_frame("train")["path"])  # another order: nothing left out for good
    for split in ("val", "test"):
        batches = list(module.dataloader(split))
        assert len(module.split_frame(split)) % 8 and {len(batch["label"]) for batch in batches} == {8}
        store = PredictionStore()
        for batch in batches:
            store.update(batch["image_idx"], batch["study_idx"], batch["patient_idx"], batch["body_part_idx"], batch["label"],
                         torch.zeros(len(batch["label"])))
        assert store.compute()["image_idx"].tolist() == module.split_frame(split)["image_idx"].tolist()


def test_padding_fills_each_process_share_to_whole_batches():
    for world_size in (1, 2):
        shares = []
        for rank in range(world_size):
            sampler = SeededSampler(21, seed=0, shuffle=False, augment=False, pad_to_multiple=8)
            sampler._world = lambda rank=rank, world=world_size: (rank, world)
            shares.append([index for index, _ in sampler])
            assert len(shares[-1]) == len(sampler) and len(sampler) % 8 == 0
        assert set().union(*shares) == set(range(21))


def test_grad_cam_never_starts_cudnn_autotuning(monkeypatch):
    from mura.inference.explain import gradcam_maps
    from mura.models.backbones import build_backbone

    network = build_backbone("densenet_small", in_channels=1, image_size=32)
    seen = []
    forward = network.forward
    monkeypatch.setattr(network, "forward", lambda images: (seen.append(torch.backends.cudnn.benchmark), forward(images))[1])
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # as trainer.benchmark=true leaves it
    maps, probabilities = gradcam_maps(network, torch.rand(3, 1, 32, 32))
    assert seen and not any(seen) and torch.backends.cudnn.benchmark is True
    assert maps.shape == (3, 32, 32) and probabilities.shape == (3,)
