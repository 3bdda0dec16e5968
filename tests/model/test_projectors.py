import pytest
import torch

from vltool.model.projectors import (
    LayerNormMLPProjector,
    LinearProjector,
    MLPProjector,
    ResamplerProjector,
    sincos_2d,
)


@pytest.mark.parametrize(
    ("projector", "patches", "tokens"),
    [
        (LinearProjector(32, 64), 16, 16),
        (MLPProjector(32, 64, depth=1), 16, 16),
        (MLPProjector(32, 64, depth=3), 16, 16),
        (LayerNormMLPProjector(32, 64), 16, 16),
        (ResamplerProjector(32, 64, num_queries=4, num_heads=4), 16, 4),
        (ResamplerProjector(32, 64, num_queries=4, num_heads=4), 64, 4),
    ],
)
def test_token_counts_and_shapes(projector, patches, tokens):
    assert projector.num_output_tokens(patches) == tokens
    out = projector(torch.randn(3, patches, 32))
    assert out.shape == (3, tokens, 64)


def test_mlp_depth_two_is_llava_mlp2x_gelu():
    projector = MLPProjector(8, 16, depth=2)
    x = torch.randn(2, 5, 8)
    expected = projector.linear_2(torch.nn.functional.gelu(projector.linear_1(x)))
    torch.testing.assert_close(projector(x), expected)


def test_sincos_positions():
    pos = sincos_2d(4, 16)
    assert pos.shape == (16, 16)
    # first half encodes the row: equal within a row, different across rows
    torch.testing.assert_close(pos[0, :8], pos[3, :8])
    assert not torch.allclose(pos[0, :8], pos[4, :8])
    torch.testing.assert_close(pos[0, 8:], pos[4, 8:])


def test_resampler_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        ResamplerProjector(8, 16, num_queries=10)
