"""Running under ``torchrun``: process group, device per rank, and the few collectives used.

stainadapt does no process management of its own. ``torchrun`` (``python -m
torch.distributed.run``) starts one process per device and tells each its place through
the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``);
this module reads that, opens the process group with the backend that fits the device
(NCCL for CUDA tensors, gloo for CPU tensors) and offers the handful of helpers the
trainer and the predictor need.

Everything degrades to a no-op in a plain single process (no torchrun, or
``--nproc-per-node 1``): :func:`world_size` is 1, :func:`is_main` is true, the reductions
return their input, :func:`wrap` returns the module itself. So the single-process code
path stays exactly what it was, and the resume tests' bit-identity is untouched.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "Launch",
    "launch_from_env",
    "backend_for",
    "local_device",
    "session",
    "is_active",
    "rank",
    "world_size",
    "is_main",
    "barrier",
    "all_reduce_mean",
    "all_reduce_max",
    "broadcast_object",
    "all_gather_objects",
    "wrap",
    "unwrap",
    "cleanup",
    "parameter_digest",
    "CHECKSUM_ENV",
]

#: Debug switch: with ``STAINADAPT_DDP_CHECKSUM=1`` every rank writes
#: ``rank{r}.checksum`` (a digest of its parameters) into the run folder at the end, so a
#: test can check that data parallelism kept the replicas identical.
CHECKSUM_ENV = "STAINADAPT_DDP_CHECKSUM"


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int


def launch_from_env(env: Mapping[str, str] | None = None) -> Launch | None:
    """The torchrun launch described by ``env`` (default ``os.environ``), or ``None``.

    ``None`` when the variables are absent (a plain ``python -m stainadapt``). torchrun
    always sets all three; a partial set (some cluster operators set ``RANK`` and
    ``WORLD_SIZE`` for a launcher they expect you to run) is an InputError saying so.
    """
    from .errors import InputError

    env = os.environ if env is None else env
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    present = [k for k in keys if env.get(k, "") != ""]
    if not present:
        return None
    if len(present) != len(keys):
        missing = ", ".join(k for k in keys if k not in present)
        raise InputError(f"{', '.join(present)} set but {missing} not: start several "
                         "processes with torchrun (torchrun --nproc-per-node N -m stainadapt ...)")
    try:
        launch = Launch(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]))
    except ValueError:
        raise InputError("RANK, WORLD_SIZE and LOCAL_RANK must be integers "
                         f"(got {env['RANK']!r}, {env['WORLD_SIZE']!r}, "
                         f"{env['LOCAL_RANK']!r})") from None
    if not 0 <= launch.rank < launch.world_size:
        raise InputError(f"RANK {launch.rank} outside WORLD_SIZE {launch.world_size}")
    return launch


def backend_for(device: torch.device | str) -> str:
    """The collective backend for tensors on ``device``: NCCL for CUDA, gloo otherwise.

    NCCL only moves CUDA tensors and is much faster there; gloo is the backend that
    handles CPU tensors (and works everywhere), so CPU runs -- and the tests -- use it.
    """
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def local_device(device: torch.device, launch: Launch | None = None) -> torch.device:
    """The device this rank computes on: ``cuda:LOCAL_RANK`` for CUDA under torchrun.

    torchrun starts one process per GPU of a node; each takes the GPU of its local rank
    whatever index ``--device`` named. CPU stays CPU. Without torchrun: ``device``.
    """
    launch = launch_from_env() if launch is None else launch
    if launch is None or launch.world_size <= 1 or device.type != "cuda":
        return device
    return torch.device("cuda", launch.local_rank)


# --------------------------------------------------------------------------- lifetime


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[Launch | None]:
    """Open the process group for the duration of a command (when under torchrun).

    Picks the backend from ``device`` (:func:`backend_for`), pins CUDA to the local rank,
    and destroys the group on a normal exit. A group that is already open (a user's own
    script) is used as it is and left open. On an exception or interrupt the group is
    *not* torn down with collectives: a peer may be gone, and a barrier would hang;
    torchrun stops the remaining workers itself.
    """
    launch = launch_from_env()
    if launch is None or launch.world_size <= 1 or not dist.is_available():
        yield launch
        return
    if dist.is_initialized():
        yield launch
        return
    dev = local_device(device, launch)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    kwargs: dict[str, Any] = {"backend": backend_for(dev),
                              "timeout": datetime.timedelta(minutes=30)}
    if dev.type == "cuda":
        kwargs["device_id"] = dev  # binds NCCL to this GPU (no guessing in barrier())
    dist.init_process_group(**kwargs)
    yield launch  # an exception here propagates without reaching cleanup() (see above)
    # Every rank got here normally: leave together. Without the barrier a rank that
    # finished first tore the gloo group down under a slower one, which then aborted in
    # its own teardown ("terminate called without an active exception", exit -6) after
    # its work was done (seen once in CI). A rank that failed never reaches this line,
    # and torchrun stops the others.
    dist.barrier()
    cleanup()


def cleanup() -> None:
    """Destroy the process group if one is open (idempotent)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- queries


def is_active() -> bool:
    """A process group with more than one rank is open."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (from the group, else torchrun's ``RANK``, else 0).

    Falling back to the environment keeps the answer right after the group is closed,
    so a CLI command can still print on rank 0 only.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    try:
        launch = launch_from_env()
    except Exception:  # a broken environment is reported where the group is opened
        return 0
    return launch.rank if launch is not None else 0


def world_size() -> int:
    """Number of ranks in the open group; 1 without one."""
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    """Rank 0: the only process that writes the run folder, logs and progress."""
    return rank() == 0


# --------------------------------------------------------------------------- collectives


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_active():
        dist.barrier()


def all_reduce_mean(values: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Mean over ranks of scalar tensors, as floats: one collective and one host sync.

    Keys are reduced in sorted order so ranks agree on the layout whatever order their
    dicts were filled in; every rank must pass the same keys.
    """
    keys = sorted(values)
    if not keys:
        return {}
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    if is_active():
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        stacked = stacked / dist.get_world_size()
    return dict(zip(keys, stacked.tolist(), strict=True))


def all_reduce_max(value: torch.Tensor) -> torch.Tensor:
    """Element-wise max over ranks (a new tensor; the input itself in one process).

    Used for the "non-finite loss" flag: if one rank skips an optimiser step, all must,
    or the replicas drift apart.
    """
    if not is_active():
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (picklable objects; identity in one process)."""
    if not is_active():
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in one process)."""
    if not is_active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------- modules


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when several ranks run, else itself.

    DDP averages the gradients of every backward pass that went through *this* wrapper
    and broadcasts rank 0's buffers (BatchNorm statistics) before each forward, so each
    network the trainer optimises separately gets a wrapper of its own.
    ``find_unused_parameters`` stays off: every parameter of G and of each discriminator
    takes part in its own loss, and the search would cost a graph walk per step.
    """
    if not is_active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return getattr(module, "module", module)


def parameter_digest(modules: list[torch.nn.Module]) -> str:
    """sha256 of the parameters' bytes (in order), plus their float64 sum, as one line.

    Only parameters: BatchNorm running statistics legitimately differ between ranks
    (each rank updates them from its own batches between DDP's broadcasts).
    """
    import hashlib

    h = hashlib.sha256()
    total = 0.0
    for m in modules:
        for name, p in unwrap(m).named_parameters():
            t = p.detach().to("cpu", torch.float32).contiguous()
            h.update(name.encode())
            h.update(t.numpy().tobytes())
            total += float(t.double().sum())
    return f"{h.hexdigest()} {total!r}\n"
