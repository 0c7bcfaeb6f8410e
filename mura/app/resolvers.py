"""OmegaConf resolvers that make the configs' defaults fast wherever they run.

`${mura.cuda:}` is true on a CUDA machine; `${mura.fast_precision:}` is bf16 autocast where the GPU supports
it and full fp32 elsewhere (bf16 autocast slows CPU convolutions); `${mura.optuna_direction:min}` is
`minimize`. Registered when `mura` is imported, so
every command and every notebook resolves the same configs.
"""

from __future__ import annotations

from omegaconf import OmegaConf


def cuda_available() -> bool:
    import torch  # imported when a config is resolved, not when `mura` is

    return torch.cuda.is_available()


def fast_precision() -> str:
    import torch

    return "bf16-mixed" if cuda_available() and torch.cuda.is_bf16_supported() else "32-true"


def optuna_direction(mode: str) -> str:
    """selection.mode (min | max) as Optuna's direction, so the sweep optimises what the checkpoint selects."""
    directions = {"min": "minimize", "max": "maximize"}
    if mode not in directions:
        raise ValueError(f"selection.mode must be min or max, not {mode!r}")
    return directions[mode]


def register() -> None:
    for name, function in (("mura.cuda", cuda_available), ("mura.fast_precision", fast_precision),
                           ("mura.optuna_direction", optuna_direction)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
