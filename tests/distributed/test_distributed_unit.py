"""The pure parts of stainadapt.distributed and the trainer's sharding, in-process."""

from __future__ import annotations

import pytest
import torch

from stainadapt import distributed
from stainadapt.errors import InputError
from stainadapt.testing import make_domain


def test_backend_follows_the_device():
    assert distributed.backend_for(torch.device("cuda", 1)) == "nccl"
    assert distributed.backend_for("cuda") == "nccl"
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.backend_for("cpu") == "gloo"


def test_launch_from_env():
    assert distributed.launch_from_env({}) is None
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert distributed.launch_from_env(env) == distributed.Launch(3, 4, 1)
    with pytest.raises(InputError, match="LOCAL_RANK not: start several processes with"):
        distributed.launch_from_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(InputError, match="outside"):
        distributed.launch_from_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(InputError, match="integers"):
        distributed.launch_from_env({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_local_device_takes_the_local_rank_for_cuda_only():
    launch = distributed.Launch(rank=5, world_size=8, local_rank=1)
    assert distributed.local_device(torch.device("cuda"), launch) == torch.device("cuda", 1)
    assert distributed.local_device(torch.device("cuda", 0), launch) == torch.device("cuda", 1)
    assert distributed.local_device(torch.device("cpu"), launch) == torch.device("cpu")
    one = distributed.Launch(rank=0, world_size=1, local_rank=0)
    assert distributed.local_device(torch.device("cuda", 2), one) == torch.device("cuda", 2)


def test_single_process_helpers_are_no_ops(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    distributed.barrier()
    assert distributed.all_reduce_mean({"b": torch.tensor(2.0), "a": torch.tensor(1)}) == {
        "a": 1.0, "b": 2.0}
    flag = torch.tensor(1.0)
    assert distributed.all_reduce_max(flag) is flag
    assert distributed.broadcast_object({"x": 1}) == {"x": 1}
    assert distributed.all_gather_objects(7) == [7]
    net = torch.nn.Linear(2, 2)
    assert distributed.wrap(net, torch.device("cpu")) is net
    assert distributed.unwrap(net) is net
    with distributed.session(torch.device("cpu")) as launch:
        assert launch is None
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.rank() == 1 and not distributed.is_main()  # no group: env decides


def test_parameter_digest_sees_every_bit():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert distributed.parameter_digest([a]) == distributed.parameter_digest([b])
    with torch.no_grad():
        b.weight[0, 0] = torch.nextafter(b.weight[0, 0], torch.tensor(1.0))
    assert distributed.parameter_digest([a]) != distributed.parameter_digest([b])


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist-unit")
    return make_domain(root / "s", "source", n=4, size=96), make_domain(root / "t", "target", n=4)


def _config(domains, tmp_path, **kw):
    from stainadapt.config import TrainConfig

    s, t = domains
    base = dict(source=str(s), target=str(t), mode="uda", discs=["single:layer=f4"],
                backbone="resnet18", image_size=64, batch_size=2, steps_per_epoch=2,
                pretrain_epochs=1, disc_epochs=0, adv_epochs=1, samples=0, device="cpu",
                augment=False, out=str(tmp_path / "run"))
    base.update(kw)
    return TrainConfig(**base)


def _as_rank(monkeypatch, rank, world):
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    monkeypatch.setattr(distributed, "rank", lambda: rank)


def test_sync_bn_on_cpu_is_a_one_line_input_error(domains, tmp_path, monkeypatch):
    from stainadapt.engine.trainer import Trainer

    _as_rank(monkeypatch, 0, 2)
    with pytest.raises(InputError, match="--sync-bn needs CUDA"):
        Trainer(_config(domains, tmp_path, sync_bn=True))


def test_ranks_draw_disjoint_shares_of_an_epoch(domains, tmp_path, monkeypatch):
    """Per-rank batch = --batch-size, ranks' crops differ, one process keeps its crops."""
    from stainadapt.engine.trainer import Trainer

    cfg = _config(domains, tmp_path)
    crops = {}
    for rank in (0, 1):
        _as_rank(monkeypatch, rank, 2)
        tr = Trainer(cfg)  # wrap() stays a no-op: no process group is open
        batches = list(tr.batches(tr.domains.src_train, True, 0, 0))
        assert len(batches) == cfg.steps_per_epoch
        assert all(b["image"].shape[0] == cfg.batch_size for b in batches)
        crops[rank] = torch.cat([b["image"] for b in batches])
    both = torch.cat([crops[0], crops[1]]).flatten(1)
    assert len({tuple(row.tolist()) for row in both}) == both.shape[0]  # no crop twice
    monkeypatch.undo()
    single = Trainer(cfg)
    assert single.world == 1
    assert len(single.batches._datasets) == 0 and single.steps == 2
