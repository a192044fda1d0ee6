"""One rule for turning a ``--device`` value into a ``torch.device``, and one for ``--amp``."""

from __future__ import annotations

import torch

from .errors import InputError

__all__ = ["resolve_amp", "resolve_device"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as torch parses it.

    A device torch cannot parse, or CUDA asked for where there is none, is an InputError.
    """
    if isinstance(device, torch.device):
        return device
    if device in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"--device {device!r}: {exc}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    return dev


def resolve_amp(
    amp: str | bool | torch.dtype | None, device: torch.device
) -> torch.dtype | None:
    """The autocast dtype of an ``--amp`` value on ``device`` (``None``: full precision).

    ``auto`` -> bf16 on CUDA, none elsewhere; ``bf16``/``bfloat16`` (or ``True``);
    ``fp16``/``float16``; ``off``/``no``/``none``/``fp32`` (or ``False``/``None``); a
    ``torch.dtype`` is taken as it is. Anything else is an InputError.
    """
    if isinstance(amp, torch.dtype):
        return amp
    if amp is True:
        amp = "bf16"
    if amp in (False, None, "off", "no", "none", "fp32"):
        return None
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if amp in ("bf16", "bfloat16"):
        return torch.bfloat16
    if amp in ("fp16", "float16"):
        return torch.float16
    raise InputError(f"--amp {amp!r}: choose auto, bf16, fp16 or off")
