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
