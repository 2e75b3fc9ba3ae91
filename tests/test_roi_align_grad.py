"""The CPU RoIAlign's sparse backward against torchvision's own backward (the reference)."""

import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from e2emfd.ops.roi_align import roi_align


def random_rois(gen, count, batch, height, width, stride):
    """Boxes of every kind RoIAlign meets: inside, across the border, fully outside, tiny,
    zero-size, and larger than the image."""
    span = torch.tensor([width * stride, height * stride], dtype=torch.float32)
    centre = torch.rand(count, 2, generator=gen) * span * 1.4 - 0.2 * span
    size = torch.rand(count, 2, generator=gen) * span * 0.6
    size[: count // 8] = torch.rand(count // 8, 2, generator=gen) * 2  # tiny
    size[count // 8 : count // 8 + 2] = 0  # empty
    size[-2:] = span * 1.5  # larger than the image
    image = torch.randint(0, batch, (count, 1), generator=gen).float()
    return torch.cat([image, centre - size / 2, centre + size / 2], 1)


@pytest.mark.parametrize("ratio", [1, 2, 3])
@pytest.mark.parametrize("height, width, stride", [(24, 40, 4), (9, 13, 8), (1, 3, 32)])
def test_sparse_backward_equals_torchvision(ratio, height, width, stride):
    gen = torch.Generator().manual_seed(height * 100 + ratio)
    feature = torch.randn(3, 5, height, width, generator=gen)
    rois = random_rois(gen, 64, 3, height, width, stride)
    grad = torch.randn(64, 5, 7, 7, generator=gen)
    ours = feature.clone().requires_grad_()
    out = roi_align(ours, rois, 7, 1.0 / stride, ratio)
    assert torch.equal(out, tv_roi_align(feature, rois, 7, 1.0 / stride, ratio, aligned=True))
    out.backward(grad)
    # the reference: torchvision's backward in float64 (the two float32 gradients differ
    # by their summation order, up to ~1.5e-5 on pixels that many samples read)
    ref = feature.double().requires_grad_()
    tv_roi_align(ref, rois.double(), 7, 1.0 / stride, ratio, aligned=True).backward(grad.double())
    torch.testing.assert_close(ours.grad, ref.grad.float(), rtol=1e-5, atol=5e-5)
    assert ours.grad.abs().sum() > 0


def test_without_gradients_it_is_torchvision_and_bad_ratio_is_refused():
    feature = torch.randn(1, 2, 8, 8, requires_grad=True)
    rois = torch.tensor([[0.0, 1.0, 1.0, 20.0, 20.0]])
    with torch.no_grad():
        assert roi_align(feature, rois, 2, 0.25, 2).grad_fn is None
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(feature, rois, 2, 0.25, 0)
