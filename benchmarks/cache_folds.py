"""A 5-fold sweep's decode-once cache: seconds and disk, as the sweep's data setup builds it (no training).

    python benchmarks/cache_folds.py /data/MURA-v1.1 [image_size]

Builds into a fresh temporary folder and deletes it afterwards; the data root is only read."""

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mura.data.datamodule import MuraDataModule

root, image_size = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 128
cache = Path(tempfile.mkdtemp()) / "cache"
started = time.perf_counter()
for fold in range(5):
    module = MuraDataModule(root=root, image_size=image_size, batch_size=32, num_workers=2, cv_folds=5, cv_fold=fold,
                            cache=True, cache_dir=str(cache), augment_on_device=True)
    module.setup("fit")
    for split in ("train", "val", "test"):
        if module.has_split(split):
            module.dataset(split, augment=False)
seconds = time.perf_counter() - started
disk = subprocess.run(["du", "-sm", str(cache)], capture_output=True, text=True).stdout.split()[0]
print(f"5 folds at {image_size} px: cache {seconds:.1f} s, {disk} MiB in {len(list(cache.glob('*.u8')))} file(s)")
shutil.rmtree(cache.parent)
