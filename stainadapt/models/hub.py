"""Published encoder weights: where timm keeps them, and one-line errors when they fail.

timm fetches a model's published weights through ``huggingface_hub`` into the standard
Hugging Face cache (``$HF_HOME/hub``, ``HF_HUB_CACHE``) and reads them from there once
cached; older entries without a hub copy come from a URL into torch's hub cache. With
``HF_HUB_OFFLINE=1`` nothing is downloaded and only the cache is read. This module finds
the cached file (for ``stainadapt info`` and the sha256 in model.json) and turns every
way of not getting the weights into one :class:`InputError` line saying what is missing
and how to provide it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["HUB_PREFIX", "hub_files", "cached_weights", "weights_error", "sha256_file",
           "published_cfg"]

#: timm's prefix of a model on the Hugging Face hub (``hf-hub:org/name``).
HUB_PREFIX = "hf-hub:"
#: Weight file names timm tries in a hub repository, in its order.
_HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                "open_clip_pytorch_model.bin")


def published_cfg(name: str) -> dict[str, Any]:
    """The ``pretrained_cfg`` timm holds for ``name`` (a timm name, tag allowed).

    Hub names (``hf-hub:org/name``) have theirs in the repository's config.json, read
    from the cache when it is there (else only the repository is known).
    """
    if name.startswith(HUB_PREFIX):
        repo = name[len(HUB_PREFIX):]
        cfg: dict[str, Any] = {}
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(repo.partition("@")[0], "config.json")
        if isinstance(config, str):  # cached: its pretrained_cfg has the tag and mean/std
            import json

            try:
                cfg = dict(json.loads(Path(config).read_text()).get("pretrained_cfg") or {})
            except (OSError, ValueError, AttributeError):
                cfg = {}
        return {**cfg, "hf_hub_id": repo}
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name, allow_unregistered=False)
    return {} if cfg is None else cfg.to_dict()


def hub_files(cfg: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...]]:
    """The hub repository of a ``pretrained_cfg`` and the weight files timm may read."""
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None, ()
    name = cfg.get("hf_hub_filename")
    return str(repo), ((str(name),) if name else _HUB_WEIGHTS)


def cached_weights(cfg: Mapping[str, Any]) -> Path | None:
    """The cached weights file of a ``pretrained_cfg``, or None; never touches the network."""
    if cfg.get("file"):
        path = Path(cfg["file"])
        return path if path.is_file() else None
    repo, names = hub_files(cfg)
    if repo:
        from huggingface_hub import try_to_load_from_cache

        repo_id, _, revision = repo.partition("@")
        for name in names:
            found = try_to_load_from_cache(repo_id, name, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
    url = cfg.get("url")
    if url:
        import torch

        path = Path(torch.hub.get_dir()) / "checkpoints" / str(url).rsplit("/", 1)[-1]
        if path.is_file():
            return path
    return None


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def weights_error(name: str, exc: BaseException, what: str = "pretrained weights") -> InputError:
    """One line for a failure to get ``name``'s published ``what`` (weights or config).

    Says which repository and file are missing and the two ways to provide them:
    ``--pretrained FILE``, or filling the Hugging Face cache where the network is
    allowed and running with ``HF_HUB_OFFLINE=1``.
    """
    from huggingface_hub import errors as hub_errors

    try:
        cfg = published_cfg(name)
    except Exception:  # an unregistered name: the repository is unknown
        cfg = {}
    repo, names = hub_files(cfg)
    where = f"Hugging Face repo {repo}, file {names[0]}" if repo else (cfg.get("url") or name)
    fill = (f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\"")
    provide = (f"give --pretrained FILE (a safetensors or state-dict file), or fill the cache "
               f"once where the network is allowed ({fill}) and run with HF_HUB_OFFLINE=1")
    if isinstance(exc, hub_errors.GatedRepoError):
        return InputError(f"{name}: {where} is gated: accept its terms on huggingface.co "
                          "and log in (hf auth login, or HF_TOKEN), or give --pretrained FILE")
    if isinstance(exc, hub_errors.RepositoryNotFoundError):
        return InputError(f"{name}: {where} not found on the Hugging Face hub (a private "
                          "repo needs a login: hf auth login, or HF_TOKEN); or give "
                          "--pretrained FILE")
    if isinstance(exc, hub_errors.HfHubHTTPError):
        return InputError(f"{name}: the Hugging Face hub refused {where} "
                          f"({_first_line(exc)}); {provide}")
    if isinstance(exc, hub_errors.LocalEntryNotFoundError | hub_errors.OfflineModeIsEnabled
                  | OSError | ConnectionError):
        return InputError(f"{name}: {what} not in the cache ({where}) and not downloadable "
                          f"here (offline or no network); {provide}")
    if isinstance(exc, RuntimeError) and "No pretrained weights" in str(exc):
        return InputError(f"{name}: timm publishes no pretrained weights for this model; "
                          "give --pretrained FILE, or train from random weights")
    return InputError(f"{name}: cannot load the published {what} ({_first_line(exc)}); "
                      f"{provide}")
