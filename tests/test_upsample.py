"""The one-pass region upsampling (``e2emfd.ops.upsample``) against torch's own bilinear
``F.interpolate`` in float64, values and gradients, whole frames and windows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from e2emfd.config import FusionConfig
from e2emfd.models.orppt import ORPPTHead
from e2emfd.ops.upsample import bilinear_matrix, upsample_sum

# (frame height, width, [level sizes]): a padded frame and its P2..P4, a frame that is not a
# multiple of its levels, and one level alone
FRAMES = [
    (64, 96, [(16, 24), (8, 12), (4, 6)]),
    (50, 70, [(13, 18), (7, 9)]),
    (32, 32, [(1, 1)]),
]


def _windows(height, width, gen):
    windows = [None, (0, 0, 1, 1), (height - 1, width - 1, height, width)]
    for _ in range(6):
        top, left = (int(torch.randint(0, n, (), generator=gen)) for n in (height, width))
        bottom = int(torch.randint(top + 1, height + 1, (), generator=gen))
        right = int(torch.randint(left + 1, width + 1, (), generator=gen))
        windows.append((top, left, bottom, right))
    return windows


def _reference(maps, size, align_corners, bias):
    total = sum(F.interpolate(x, size, mode="bilinear", align_corners=align_corners) for x in maps)
    return total + bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_values_and_gradients_match_interpolate_in_float64(align_corners, channels_last):
    gen = torch.Generator().manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for height, width, sizes in FRAMES:
        for window in _windows(height, width, gen):
            top, left, bottom, right = window or (0, 0, height, width)
            maps = [
                torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64)
                .contiguous(memory_format=layout)
                .requires_grad_()
                for h, w in sizes
            ]
            bias = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
            got = upsample_sum(maps, (height, width), window, align_corners, bias)
            want = _reference(maps, (height, width), align_corners, bias)
            want = want[..., top:bottom, left:right]
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
            upstream = torch.randn(got.shape, generator=gen, dtype=torch.float64)
            grads = torch.autograd.grad(got, [*maps, bias], upstream)
            expected = torch.autograd.grad(want, [*maps, bias], upstream)
            for g, e in zip(grads, expected):
                torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_the_comparison_tells_the_two_sampling_rules_apart():
    # the other rule (corners aligned vs pixel centres) moves sources by under a pixel
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    centres = F.interpolate(x, (32, 32), mode="bilinear", align_corners=False)
    corners = upsample_sum([x], (32, 32), None, True, zero)
    assert (corners - centres).abs().max() > 1e-2


@pytest.mark.parametrize("stride", [2, 4, 8, 16, 32, 64])
def test_bf16_matrices_are_exact_for_whole_multiples(stride):
    exact = bilinear_matrix(5, 5 * stride, False, torch.device("cpu"), torch.float64)
    rounded = bilinear_matrix(5, 5 * stride, False, torch.device("cpu"), torch.bfloat16)
    assert torch.equal(rounded.double(), exact)
    assert torch.equal(exact.sum(1), torch.ones(5 * stride, dtype=torch.float64))


def test_a_matrix_first_built_in_inference_mode_trains():
    bilinear_matrix.cache_clear()
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    with torch.inference_mode():
        upsample_sum([x.detach()], (16, 16))
    upsample_sum([x], (16, 16)).sum().backward()  # would raise on an inference tensor
    assert x.grad is not None


def test_head_gives_the_same_regions_either_way():
    torch.manual_seed(0)
    feats = {f"p{i}": torch.randn(2, 16, 64 // 2**i, 96 // 2**i) for i in range(2, 6)}
    heads = {}
    for mode in ("matmul", "interpolate"):
        torch.manual_seed(1)
        cfg = FusionConfig(pixel_channels=4, hidden=8, region_upsampling=mode)
        heads[mode] = ORPPTHead(cfg, in_channels=16).eval()
    for window in (None, (5, 7, 40, 90)):
        got = heads["matmul"].regions_at(feats, (64, 96), window)
        want = heads["interpolate"].regions_at(feats, (64, 96), window)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_channels_last_stays_bf16_channels_last():
    # the GPU's inference setting, run on the CPU: the product's output is the regions'
    # layout and dtype (nothing converted after it), and near the float32 result
    torch.manual_seed(0)
    feats = {
        f"p{i}": torch.randn(1, 16, 64 // 2**i, 96 // 2**i).contiguous(
            memory_format=torch.channels_last
        )
        for i in range(2, 6)
    }
    head = ORPPTHead(FusionConfig(pixel_channels=4, hidden=8), in_channels=16).eval()
    head.to(memory_format=torch.channels_last)
    want = head.regions_at(feats, (64, 96))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head.regions_at(feats, (64, 96))
    assert got.dtype == torch.bfloat16
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
