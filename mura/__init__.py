"""mura: abnormality detection in musculoskeletal radiographs (Stanford MURA), with Lightning and Hydra."""

__version__ = "0.1.0"
