"""The measurements behind `python -m mura.bench`."""
