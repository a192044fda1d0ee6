"""Re-estimated BatchNorm statistics."""

import torch
from torch import nn

from stainadapt.models.batchnorm import batchnorm_layers, recalibrate_batchnorm


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 1, 1))


def test_statistics_become_the_average_over_the_batches():
    net = _net().eval()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k
               and "num_batches" not in k}
    batches = [torch.randn(2, 3, 8, 8) * 3 + 1 for _ in range(4)]
    assert recalibrate_batchnorm(net, batches) == 4
    bn = batchnorm_layers(net)[0]
    conv = net[0]
    means = torch.stack([conv(b).mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    assert torch.allclose(bn.running_mean, means, atol=1e-5)
    assert bn.momentum == 0.1 and not net.training  # restored
    for k, v in net.state_dict().items():  # nothing else changed
        if k in weights:
            assert torch.equal(v, weights[k]), k


def test_no_batches_leaves_the_statistics():
    net = _net()
    net(torch.randn(2, 3, 8, 8))
    before = batchnorm_layers(net)[0].running_var.clone()
    assert recalibrate_batchnorm(net, []) == 0
    assert torch.equal(batchnorm_layers(net)[0].running_var, before)


def test_per_sample_norm_replaces_every_batchnorm_and_loads_back(tmp_path):
    import pytest

    from stainadapt.models.batchnorm import replace_batchnorm
    from stainadapt.models.unet import SegmentationNet
    from stainadapt.runs import load_model, save_model

    torch.manual_seed(0)
    net = SegmentationNet("resnet18", norm="instance").eval()
    assert not batchnorm_layers(net)
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == m.num_channels for m in norms)
    x = torch.rand(2, 3, 64, 64)
    alone = net(x[:1])
    assert torch.allclose(net(x)[:1], alone, atol=1e-5)  # the batch does not matter
    save_model(tmp_path, net, {"backbone": "resnet18", "image_size": 64})
    back, meta = load_model(tmp_path)
    assert meta["norm"] == "instance"
    assert torch.allclose(back(x[:1]), alone, atol=1e-6)
    group = replace_batchnorm(_net(), "group")
    assert isinstance(group[1], nn.GroupNorm) and group[1].num_groups == 4
    with pytest.raises(ValueError, match="batch, group, instance"):
        replace_batchnorm(_net(), "layer")
