"""Behaviour of the built-in discriminators: options, errors, gradients into G."""

from __future__ import annotations

import pytest
import torch

from stainadapt import registry
from stainadapt.discriminators.base import Discriminator
from stainadapt.discriminators.concat import center_crop
from stainadapt.errors import InputError, PluginError
from stainadapt.models.unet import SegmentationNet
from stainadapt.testing.discriminators import make_inputs


@pytest.fixture(scope="module")
def net():
    return SegmentationNet("resnet18")


def make(spec, net):
    return registry.create("discriminators", spec, net.feature_table)


@pytest.mark.parametrize("name", registry.plugin_names("discriminators"))
def test_gradients_reach_g(net, name):
    disc = make(name, net)
    net.zero_grad()
    logits, feats = net(torch.randn(2, 3, 64, 64), return_features=True)
    inputs = dict(feats, mask=torch.sigmoid(logits))
    out = disc(inputs)
    sum(v.sum() for v in out.values()).backward()
    grad = net.encoder.conv1.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_defaults_follow_the_paper(net):
    assert make("single", net).weights == {"single": 0.01}
    assert make("single", net).consumes == ("f4",)
    assert make("mirrored", net).weights == {"encoder": 0.01, "decoder": 0.05}
    shape = make("shape", net)
    assert shape.kind == "shape" and shape.consumes == ("mask",) and shape.weights == {"shape": 0.1}
    concat = make("concat", net)
    assert concat.consumes == tuple(f"f{i}" for i in range(10)) and concat.mode == "crop"
    assert all(isinstance(make(n, net), Discriminator) for n in ("single", "concat"))


def test_single_layer_option(net):
    disc = make("single:layer=f9,weight=0.05", net)
    assert disc.consumes == ("f9",) and disc.weights == {"single": 0.05}
    assert disc.spec == "single:layer=f9,weight=0.05,base=8"


def test_single_bad_layer_lists_the_valid_ones(net):
    with pytest.raises(PluginError) as err:
        make("single:layer=f10", net)
    message = str(err.value)
    assert "f10" in message and "f0, f1" in message and "f9" in message


@pytest.mark.parametrize(
    ("side", "heads", "consumes"),
    [
        ("encoder", {"encoder"}, ("f0", "f1", "f2", "f3", "f4")),
        ("decoder", {"decoder"}, ("f9", "f8", "f7", "f6", "f5")),
        ("both", {"encoder", "decoder"}, None),
    ],
)
def test_mirrored_side(net, side, heads, consumes):
    disc = make(f"mirrored:side={side}", net)
    assert set(disc.weights) == heads
    if consumes:
        assert disc.consumes == consumes
    out = disc(make_inputs(net.feature_table, 64))
    assert set(out) == heads


def test_mirrored_bad_side(net):
    with pytest.raises(PluginError, match="encoder, decoder"):
        make("mirrored:side=left", net)


def test_mirrored_concatenates_maps_uncropped(net):
    """Each joining map must match the stream's size exactly: an odd size is refused."""
    disc = make("mirrored:side=encoder", net)
    inputs = make_inputs(net.feature_table, 64)
    inputs["f2"] = inputs["f2"][..., :7, :7]
    with pytest.raises(InputError, match="multiples of 32"):
        disc(inputs)


def test_concat_crop_is_a_view_and_pool_differs(net):
    x = torch.randn(1, 2, 8, 8)
    crop = center_crop(x, 2, 2)
    assert crop.data_ptr() == x[..., 3:5, 3:5].data_ptr()
    torch.manual_seed(0)
    crop_disc = make("concat:mode=crop", net).eval()
    pool_disc = make("concat:mode=pool", net).eval()
    pool_disc.load_state_dict(crop_disc.state_dict())
    inputs = make_inputs(net.feature_table, 64)
    with torch.no_grad():
        assert not torch.equal(crop_disc(inputs)["concat"], pool_disc(inputs)["concat"])


def test_concat_bad_mode(net):
    with pytest.raises(PluginError, match="crop, pool"):
        make("concat:mode=resize", net)


def test_missing_input_is_named(net):
    disc = make("single:layer=f3", net)
    with pytest.raises(InputError, match="missing f3"):
        disc({"f4": torch.zeros(1, 512, 2, 2)})


@pytest.mark.parametrize("spec", ["single:weight=-1", "mirrored:weight_decoder=abc"])
def test_bad_weight(net, spec):
    with pytest.raises(PluginError, match="weight"):
        make(spec, net)


def test_unknown_option_is_refused(net):
    with pytest.raises(PluginError, match="accepted options"):
        make("single:depth=3", net)


def test_shape_pretrained_local_file(tmp_path, net):
    disc = make("shape", net)
    path = tmp_path / "shape.pt"
    torch.save(disc.net.state_dict(), path)
    again = registry.create("discriminators", "shape", net.feature_table, pretrained=str(path))
    for key, value in disc.net.state_dict().items():
        assert torch.equal(again.net.state_dict()[key], value)


def test_shape_sees_binary_masks_but_passes_gradients(net):
    """hard (default): soft probabilities are binarised, so softness is no cue to D."""
    from stainadapt.discriminators.shape import straight_through_binarize

    probs = torch.tensor([0.2, 0.5, 0.51, 0.9], requires_grad=True)
    hard = straight_through_binarize(probs)
    assert hard.tolist() == [0.0, 0.0, 1.0, 1.0]
    hard.sum().backward()
    assert probs.grad.tolist() == [1.0, 1.0, 1.0, 1.0]  # identity gradient to G

    disc = make("shape", net).eval()
    soft = torch.full((1, 1, 32, 32), 0.8)
    soft[..., :16] = 0.3
    binary = (soft > 0.5).float()
    assert torch.equal(disc({"mask": soft})["shape"], disc({"mask": binary})["shape"])
    literal = make("shape:hard=false", net).eval()
    literal.load_state_dict(disc.state_dict())
    assert not torch.equal(literal({"mask": soft})["shape"], literal({"mask": binary})["shape"])


def test_self_information_is_the_binary_entropy_in_bits():
    from stainadapt.discriminators.entropy import self_information

    p = torch.tensor([0.0, 0.5, 1.0, 0.1]).view(1, 1, 1, 4).requires_grad_(True)
    info = self_information(p)
    assert info.shape == (1, 2, 1, 4)
    total = info.sum(1).flatten()
    assert total[1].item() == pytest.approx(1.0, abs=1e-6)
    assert total[0].item() < 1e-4 and total[2].item() < 1e-4
    assert total[3].item() == pytest.approx(0.469, abs=1e-3)
    total.sum().backward()
    assert torch.isfinite(p.grad).all()  # clamped: no inf at p = 0 or 1


def test_entropy_discriminator_learns_confident_from_unsure_maps():
    """Source-like maps (p near 0 or 1) against target-like ones (p near 0.5): a few
    Adam steps separate them, and G's term then points target maps towards confidence."""
    torch.manual_seed(0)
    disc = registry.create("discriminators", "entropy:width=8,depth=3", {})
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    labels = torch.tensor([1.0] * 4 + [0.0] * 4)

    def maps() -> torch.Tensor:
        sure = (torch.rand(4, 1, 32, 32) > 0.8).float() * 0.98 + 0.01
        unsure = 0.5 + 0.2 * (torch.rand(4, 1, 32, 32) - 0.5)
        return torch.cat([sure, unsure])

    for _ in range(40):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            disc({"mask": maps()})["entropy"], labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    logits = disc({"mask": maps()})["entropy"]
    assert ((logits > 0).float() == labels).all()
    # G's flipped-label term on the target rows: lowering it moves p away from 0.5
    target = (0.5 + 0.1 * torch.rand(4, 1, 32, 32)).requires_grad_(True)
    g_term = torch.nn.functional.binary_cross_entropy_with_logits(
        disc({"mask": target})["entropy"], torch.ones(4))
    g_term.backward()
    assert (target.grad.mean() < 0)  # gradient descent raises p above 0.5: more confident


@pytest.mark.parametrize("spec", ["entropy:depth=0", "entropy:width=x", "entropy:weight=-1"])
def test_entropy_bad_options_are_plugin_errors(spec):
    with pytest.raises(PluginError):
        registry.create("discriminators", spec, {})
