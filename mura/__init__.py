"""mura: abnormality detection in musculoskeletal radiographs (Stanford MURA), with Lightning and Hydra."""

from mura.app.resolvers import register as _register_resolvers

__version__ = "0.1.0"

_register_resolvers()
