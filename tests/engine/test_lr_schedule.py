"""The learning-rate schedule as a function of the step."""

import math

import pytest

from stainadapt.engine.lr_schedule import lr_factor


def test_constant_with_warmup():
    assert [lr_factor(s, 100, "constant", warmup=4) for s in range(6)] == \
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0, 100) == 1.0


@pytest.mark.parametrize("kind", ["cosine", "poly"])
def test_decays_monotonically_to_zero(kind):
    vals = [lr_factor(s, 200, kind, warmup=10) for s in range(200)]
    assert vals[9] == 1.0 and vals[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(vals[10:], vals[11:], strict=False))
    assert vals[-1] < 0.05
    assert lr_factor(200, 200, kind, 10) == pytest.approx(0.0)
    assert lr_factor(500, 200, kind, 10) == pytest.approx(0.0)


def test_cosine_midpoint_and_poly_shape():
    assert lr_factor(50, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(50, 100, "poly") == pytest.approx(0.5**0.9)
    assert lr_factor(25, 100, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_unknown_schedule():
    with pytest.raises(ValueError, match="constant, cosine, poly"):
        lr_factor(0, 10, "step")
