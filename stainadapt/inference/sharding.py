"""How a torchrun job shares prediction: whole files dealt to ranks, slides band by band.

Files below the streaming size go whole to one rank each (:func:`file_owner`); a
streamed slide is shared by every rank, group of bands by group (:class:`BandShards`).
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["BandShards", "file_owner"]


def file_owner(index: int, world: int) -> int:
    """The rank that predicts input file number ``index`` (in input order) on its own."""
    return index % world


class BandShards:
    """One large image split across the ranks of a torchrun job, group of bands by group.

    Group ``g`` (see :meth:`SlidingWindowPredictor._layout`) is computed by rank
    ``g % world``; every other rank sends each of its groups' results to rank 0 as
    ``[status, n_kept]`` (int64), the skip flags of the group's windows (int64) and the
    kept windows' probabilities ``(n_kept, T, T)`` (float32), in group order. Rank 0 blends
    them in the one-process order, so the mask is byte-identical to a one-process run.
    A rank that fails sends ``status = 1`` for each remaining group of its own: rank 0
    always receives exactly one message per remote group, and nobody waits forever.
    Tensors travel on the CPU with gloo and on the device with NCCL.
    """

    def __init__(self, rank: int, world: int, device: torch.device) -> None:
        import torch.distributed as dist

        self.rank, self.world = rank, world
        self.comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
        self._received: set[int] = set()

    def owner(self, group: int) -> int:
        return group % self.world

    def send(self, skipped: list[bool], probs: torch.Tensor | None) -> None:
        import torch.distributed as dist

        n = 0 if probs is None else int(probs.shape[0])
        dist.send(torch.tensor([0, n], dtype=torch.int64, device=self.comm), dst=0)
        dist.send(torch.tensor(skipped, dtype=torch.int64, device=self.comm), dst=0)
        if probs is not None and n:
            dist.send(probs.float().contiguous().to(self.comm), dst=0)

    def send_failure(self) -> None:
        import torch.distributed as dist

        dist.send(torch.tensor([1, 0], dtype=torch.int64, device=self.comm), dst=0)

    def receive(self, group: int, n_windows: int, tile: int) -> tuple[list[bool], torch.Tensor]:
        """Rank 0: the skip flags and kept probabilities of a group another rank owns."""
        import torch.distributed as dist

        src = self.owner(group)
        head = torch.zeros(2, dtype=torch.int64, device=self.comm)
        dist.recv(head, src=src)
        if int(head[0]) != 0:
            self._received.add(group)
            raise RuntimeError(f"rank {src} could not predict its share of the image")
        flags = torch.zeros(n_windows, dtype=torch.int64, device=self.comm)
        dist.recv(flags, src=src)
        n = int(head[1])
        probs = torch.zeros(n, tile, tile, dtype=torch.float32, device=self.comm)
        if n:
            dist.recv(probs, src=src)
        self._received.add(group)
        return [bool(f) for f in flags.tolist()], probs

    def drain(self, sizes: list[int], tile: int) -> None:
        """Rank 0: receive (and drop) every remote group not received yet.

        ``sizes``: the number of windows of each group. Called when rank 0 stops early,
        so the other ranks' sends complete and the next file starts in step.
        """
        for g, n_windows in enumerate(sizes):
            if self.owner(g) == 0 or g in self._received:
                continue
            with contextlib.suppress(RuntimeError):  # a failure message: nothing to drop
                self.receive(g, n_windows, tile)
