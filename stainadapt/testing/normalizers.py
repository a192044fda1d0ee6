"""``check_normalizer(spec)``: the contract every stain normaliser passes.

Third-party normalisers run the same checks as the built-ins::

    from stainadapt.testing import check_normalizer
    check_normalizer("my_normalizer:strength=0.5")
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["check_normalizer", "synthetic_he"]


def synthetic_he(size: int = 64, seed: int = 0) -> np.ndarray:
    """A small ``(size, size, 3)`` uint8 H&E-like image: two stains on white glass.

    Built from the standard H&E stain vectors with smooth random concentrations, so it
    needs no download and has tissue, background and both stains.
    """
    rng = np.random.default_rng(seed)
    stains = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])  # H, E rows (RGB OD)
    yy, xx = np.mgrid[0:size, 0:size] / size
    blobs = []
    for _ in range(2):
        c = np.zeros((size, size))
        for _ in range(6):
            cy, cx, r = rng.random(3) * [1, 1, 0.25] + [0, 0, 0.05]
            c += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        blobs.append(c)
    conc = np.stack(blobs, -1) * rng.uniform(0.6, 1.4, (size, size, 2))
    od = conc @ stains + rng.normal(0, 0.01, (size, size, 3))
    img = 240.0 * np.exp(-np.clip(od, 0, None))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()


def check_normalizer(spec: str, device: str | torch.device = "cpu", **overrides: Any) -> Any:
    """Create the normaliser ``spec`` and check the contract; returns the fitted instance.

    Checks: ``fit`` accepts a uint8 ``(3, H, W)`` tensor and a numpy ``(H, W, 3)``
    array and returns the normaliser; ``forward`` keeps dtype, shape and device for
    ``(3, H, W)`` and ``(B, 3, H, W)``; a batch equals the per-image loop; a blank white
    tile gives no NaN and comes back unchanged; ``state_dict`` round trip into a fresh
    instance reproduces the output; ``.to(device)`` moves the buffers. When the
    normaliser has a trace-friendly twin (its ``exportable()`` hook), the twin agrees
    with it to one grey level and leaves the blank tile as it is.
    """
    from stainadapt.errors import InputError
    from stainadapt.normalizers.exportable import exportable_normalizer
    from stainadapt.registry import create

    dev = torch.device(device)
    norm = create("normalizers", spec, **overrides)
    assert isinstance(norm, torch.nn.Module), f"{spec}: a normaliser must be a torch.nn.Module"
    ref_np = synthetic_he(64, seed=1)
    img = _to_tensor(synthetic_he(48, seed=2))
    fitted = norm.fit(_to_tensor(ref_np))
    assert fitted is norm, f"{spec}: fit must return self"
    norm.fit(ref_np)  # numpy (H, W, 3) as read_image returns
    norm = norm.to(dev)

    out = norm(img.to(dev))
    assert out.dtype == torch.uint8, f"{spec}: output dtype {out.dtype}, expected uint8"
    assert out.shape == img.shape, f"{spec}: output shape {tuple(out.shape)} != {tuple(img.shape)}"
    assert out.device.type == dev.type, f"{spec}: output on {out.device}, expected {dev}"
    assert not torch.equal(out.cpu(), img), f"{spec}: the image was not changed at all"

    batch = torch.stack([img, img.flip(-1), _to_tensor(synthetic_he(48, seed=3))]).to(dev)
    outb = norm(batch)
    assert outb.shape == batch.shape and outb.dtype == torch.uint8
    loop = torch.stack([norm(x) for x in batch])
    diff = (outb.int() - loop.int()).abs().max().item()
    assert diff <= 1, f"{spec}: batch differs from the per-image loop by {diff} grey levels"

    blank = torch.full((3, 32, 32), 255, dtype=torch.uint8, device=dev)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outw = norm(blank)
        outf = norm(blank.float() / 255.0)
    assert outw.shape == blank.shape and outw.dtype == blank.dtype
    assert torch.isfinite(outf).all(), f"{spec}: NaN/inf on a blank tile"
    assert (outw.int() - blank.int()).abs().max() <= 5, f"{spec}: a blank tile changed colour"

    state = {k: v.detach().cpu().clone() for k, v in norm.state_dict().items()}
    fresh = create("normalizers", spec, **overrides)
    fresh.load_state_dict(state)
    fresh = fresh.to(dev)
    again = fresh(img.to(dev))
    assert torch.equal(again, out), f"{spec}: state_dict round trip changes the output"

    try:
        twin = exportable_normalizer(norm)
    except InputError:  # no twin: ``stainadapt export`` asks for --no-normalizer
        return norm
    with torch.no_grad():
        got = twin(img[None].float())[0]
        blank_out = twin(blank[None].float().cpu())[0]
    assert got.shape == img.shape, f"{spec}: the exportable twin changes the shape"
    diff = (got - out.cpu().float()).abs().max().item()
    assert diff <= 1, f"{spec}: the exportable twin differs by {diff} grey levels"
    moved = (blank_out - blank.float().cpu()).abs().max().item()
    assert moved <= 5, f"{spec}: the exportable twin changed a blank tile's colour"
    return norm
