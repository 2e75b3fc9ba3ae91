"""Backbone + ORPPT fusion head + fusion loss: shapes, gradients, references."""

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage
from torchvision.models import resnet18

from e2emfd.boxes import box_codec
from e2emfd.config import BackboneConfig, FusionConfig, load_config
from e2emfd.losses.fusion import box_mask, fusion_loss, gaussian_kernel1d, ssim_map, valid_mask
from e2emfd.models import build_model
from e2emfd.models.backbone import ResNetTrunk, SharedBackbone, load_pretrained
from e2emfd.models.baselines import collapse_pyramid, fuse_baseline, laplacian_pyramid
from e2emfd.models.color import restore_color, rgb_to_ycbcr, ycbcr_to_rgb
from e2emfd.models.orppt import ORPPTHead

TINY = [
    "model.backbone.depth=18",
    "model.backbone.width=8",
    "model.backbone.out_channels=16",
    "model.backbone.frozen_bn=false",
    "model.backbone.freeze_at=0",
    "model.fusion.pixel_channels=4",
    "model.fusion.hidden=16",
    "model.detection.enabled=false",
]


def tiny_model(*extra):
    return build_model(load_config(None, TINY + list(extra)).model)


def _batch(b, h, w, boxes=None):
    sizes = torch.tensor([[h, w]] * b)
    targets = [
        {
            "boxes": boxes[i] if boxes else torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.long),
        }
        for i in range(b)
    ]
    pad_h, pad_w = -(-h // 32) * 32, -(-w // 32) * 32
    vis = torch.zeros(b, 3, pad_h, pad_w)
    ir = torch.zeros(b, 1, pad_h, pad_w)
    vis[..., :h, :w] = torch.rand(b, 3, h, w)
    ir[..., :h, :w] = torch.rand(b, 1, h, w)
    return {"vis": vis, "ir": ir, "image_sizes": sizes, "targets": targets}


@pytest.mark.parametrize("b, h, w", [(1, 64, 64), (3, 37, 71), (3, 50, 33)])
def test_fuse_shapes_any_size(b, h, w):
    model = tiny_model().eval()
    vis, ir = torch.rand(b, 3, h, w), torch.rand(b, 1, h, w)
    assert model.fuse(vis, ir).shape == (b, 3, h, w)
    assert model.fuse(vis, ir, color="gray").shape == (b, 1, h, w)
    out = model.fuse(vis, ir)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


@pytest.mark.parametrize("b", [1, 3])
def test_training_forward_and_every_fusion_parameter_gets_a_gradient(b):
    model = tiny_model().train()
    batch = _batch(b, 64, 96, [torch.tensor([[4.0, 4.0, 30.0, 40.0]])] * b)
    loss = model(batch)["losses"]["fusion"]
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.fusion.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    pixel_params = [n for n, _ in model.fusion.named_parameters() if n.startswith("pixel.")]
    # PFMM: 2 blocks x (3 body convs + the two heads stored as one conv) x (weight, bias)
    assert len(pixel_params) == 2 * (3 + 1) * 2


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
def test_every_number_of_region_branches_builds_and_runs(k):
    model = tiny_model(f"model.fusion.num_regions={k}").train()
    assert len(model.fusion.regions) == k
    out = model(_batch(2, 64, 64))
    out["losses"]["fusion"].backward()
    assert torch.isfinite(out["losses"]["fusion"])


def test_region_reduction_commutes_with_upsampling():
    """The head reduces each branch before upsampling; check against reducing after."""
    torch.manual_seed(0)
    head = ORPPTHead(FusionConfig(pixel_channels=4, hidden=8), in_channels=16).eval()
    feats = {f"p{i}": torch.randn(2, 16, 64 // 2**i, 64 // 2**i) for i in range(2, 6)}
    fast = head.regions_at(feats, (64, 64))
    total = 0
    for name, branch in zip(head.levels, head.regions):
        total = total + torch.nn.functional.interpolate(
            branch(feats[name]), size=(64, 64), mode="bilinear"
        )
    slow = torch.relu(
        torch.nn.functional.conv2d(total, head.region_reduce.weight)
        + head.region_bias.view(1, -1, 1, 1)
    )
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_fusion_loss_zero_mask_safe_and_batch_independent():
    torch.manual_seed(0)
    fused, ir, lum = torch.rand(3, 1, 40, 50), torch.rand(3, 1, 40, 50), torch.rand(3, 1, 40, 50)
    none = fusion_loss(fused, ir, lum, None)
    empty = fusion_loss(fused, ir, lum, [torch.zeros(0, 4)] * 3)
    for key in none:
        assert torch.isfinite(none[key]) and torch.equal(none[key], empty[key])
    # Per-image masks: a box in image 1 only changes the pixel term through image 1.
    boxes = [torch.zeros(0, 4), torch.tensor([[5.0, 5.0, 20.0, 30.0]]), torch.zeros(0, 4)]
    full = fusion_loss(fused, ir, lum, boxes)["loss_pixel"]
    parts = [
        fusion_loss(fused[i : i + 1], ir[i : i + 1], lum[i : i + 1], boxes[i : i + 1])["loss_pixel"]
        for i in range(3)
    ]
    torch.testing.assert_close(full, sum(parts) / 3)


def test_fusion_loss_ignores_padding():
    torch.manual_seed(0)
    fused, ir, lum = torch.rand(1, 1, 32, 48), torch.rand(1, 1, 32, 48), torch.rand(1, 1, 32, 48)
    sizes = torch.tensor([[20, 30]])
    a = fusion_loss(fused, ir, lum, None, sizes)["loss_pixel"]
    fused2 = fused.clone()
    fused2[..., 25:, :] = 1.0  # only padding changes
    fused2[..., :, 40:] = 0.0
    b = fusion_loss(fused2, ir, lum, None, sizes)["loss_pixel"]
    torch.testing.assert_close(a, b)


def test_box_mask_hand_case():
    boxes = [torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.zeros(0, 4)]
    mask = box_mask(boxes, 5, 6, box_codec("hbb"))
    expected = torch.zeros(5, 6)
    expected[2:4, 1:3] = 1
    assert torch.equal(mask[0, 0], expected) and mask[1].sum() == 0
    assert valid_mask(torch.tensor([[2, 3]]), 4, 5)[0, 0].sum() == 6


def test_ssim_matches_a_float64_reference():
    rng = np.random.default_rng(0)
    x = rng.random((40, 50))
    y = np.clip(x + 0.1 * rng.standard_normal((40, 50)), 0, 1)
    k1 = gaussian_kernel1d(11, 1.5, dtype=torch.float64).numpy()
    w = np.outer(k1, k1)

    def filt(a):
        return ndimage.correlate(a, w, mode="reflect")

    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ref = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    got = ssim_map(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None])[0, 0].numpy()
    # scipy's 'reflect' is torch's 'symmetric'; compare away from the border
    np.testing.assert_allclose(got[6:-6, 6:-6], ref[6:-6, 6:-6], atol=1e-10)
    same = ssim_map(torch.from_numpy(x)[None, None], torch.from_numpy(x)[None, None])
    torch.testing.assert_close(same, torch.ones_like(same))


def test_ycbcr_matches_opencv():
    rgb = np.random.default_rng(1).random((8, 9, 3)).astype(np.float32)
    ycrcb = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    ours = rgb_to_ycbcr(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours[..., 0], ycrcb[..., 0], atol=1e-5)
    np.testing.assert_allclose(ours[..., 1], ycrcb[..., 2], atol=2e-3)  # Cb
    np.testing.assert_allclose(ours[..., 2], ycrcb[..., 1], atol=2e-3)  # Cr
    t = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(t)), t, atol=2e-3, rtol=0)


@pytest.mark.parametrize("mode", ["ycbcr", "hsv"])
def test_restoring_colour_on_the_visible_luminance_gives_the_visible_image(mode):
    vis = torch.rand(2, 3, 10, 12)
    lum = vis.amax(1, keepdim=True) if mode == "hsv" else rgb_to_ycbcr(vis)[:, :1]
    torch.testing.assert_close(restore_color(lum, vis, mode), vis, atol=3e-3, rtol=0)


def test_laplacian_pyramid_reconstructs_exactly_and_baselines():
    x = torch.rand(1, 1, 45, 61)
    torch.testing.assert_close(collapse_pyramid(laplacian_pyramid(x, 4)), x)
    vis, ir = torch.rand(2, 3, 30, 40), torch.rand(2, 1, 30, 40)
    y = rgb_to_ycbcr(vis)[:, :1]
    torch.testing.assert_close(fuse_baseline(vis, ir, "average", "gray"), (ir + y) / 2)
    torch.testing.assert_close(fuse_baseline(vis, ir, "max", "gray"), torch.maximum(ir, y))
    same = fuse_baseline(vis, rgb_to_ycbcr(vis)[:, :1], "laplacian", "gray")
    torch.testing.assert_close(same, y, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown fusion method"):
        fuse_baseline(vis, ir, "pca")


def test_backbone_loads_torchvision_weights_and_matches_torchvision(tmp_path):
    reference = resnet18().eval()
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    trunk = ResNetTrunk(18, 64, frozen_bn=True)
    load_pretrained(trunk, str(path), 18)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        r = reference
        expected = r.layer4(r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x))))))))
        torch.testing.assert_close(trunk.eval()(x)[-1], expected, atol=1e-4, rtol=1e-4)


def test_missing_pretrained_file_says_where_to_get_it(tmp_path):
    cfg = BackboneConfig(depth=50, pretrained=str(tmp_path / "nope.pth"))
    with pytest.raises(
        FileNotFoundError, match=r"nope\.pth: pretrained backbone weights not found.*resnet50"
    ):
        SharedBackbone(cfg)


def test_wrong_pretrained_file_is_a_clear_error(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(resnet18().state_dict(), path)
    with pytest.raises(ValueError, match=r"r18\.pth: does not match a ResNet-34"):
        SharedBackbone(BackboneConfig(depth=34, pretrained=str(path)))


def test_freeze_at_and_modalities():
    cfg = BackboneConfig(depth=18, width=8, out_channels=16, freeze_at=2, frozen_bn=True)
    backbone = SharedBackbone(cfg)
    assert not any(p.requires_grad for p in backbone.trunk.layer1.parameters())
    assert all(p.requires_grad for p in backbone.trunk.layer2.parameters())
    vis, ir = torch.rand(2, 3, 64, 64), torch.rand(2, 1, 64, 64)
    both = backbone(vis, ir)
    backbone.modality = "vis"
    only_vis = backbone(vis, ir)
    backbone.modality = "ir"
    only_ir = backbone(vis, ir)
    torch.testing.assert_close(both["p3"], only_vis["p3"] + only_ir["p3"], atol=1e-5, rtol=1e-5)
    assert list(both) == ["p2", "p3", "p4", "p5"] and both["p2"].shape == (2, 16, 16, 16)


def test_single_modality_model_cannot_fuse():
    with pytest.raises(ValueError, match="model.modality=vis has one input, so it cannot fuse"):
        tiny_model("model.modality=vis")


def test_fusion_window_is_exact_inside_its_margin():
    torch.manual_seed(5)
    model = tiny_model().eval()
    vis, ir = torch.rand(2, 3, 96, 128), torch.rand(2, 1, 96, 128)
    with torch.no_grad():
        features = model.backbone(vis, ir)
        whole = model.fusion(features, vis, ir)["fused"]
        m = model.fusion.receptive_radius
        assert m == 12  # 8 convolutions 3x3 in the pixel branch, 4 in the decoder
        for top, left, h, w in ((30, 40, 40, 50), (0, 0, 48, 64), (60, 70, 36, 58)):
            window = (
                max(0, top - m),
                max(0, left - m),
                min(96, top + h + m),
                min(128, left + w + m),
            )
            part = model.fusion(features, vis, ir, window)["fused"]
            inner = part[..., top - window[0] : top - window[0] + h, left - window[1] :][..., :w]
            torch.testing.assert_close(inner, whole[..., top : top + h, left : left + w])
            # without the margin the window's edges differ from the whole image
            bare = model.fusion(features, vis, ir, (top, left, top + h, left + w))["fused"]
            if top and left:
                assert not torch.allclose(bare, whole[..., top : top + h, left : left + w])


@pytest.mark.parametrize("align_corners", [False, True])
def test_windowed_region_upsampling_is_the_whole_frame_result_cropped(align_corners):
    # Reference: torch's whole-frame bilinear upsampling, then the window cut out of it.
    import torch.nn.functional as F

    cfg = FusionConfig(region_align_corners=align_corners)
    head = ORPPTHead(cfg, in_channels=16)
    gen = torch.Generator().manual_seed(3)
    frames = [(96, 128, s) for s in (4, 8, 16, 32)] + [(50, 70, 8)]  # last: not a multiple
    for height, width, stride in frames:
        x = torch.randn(2, 5, -(-height // stride), -(-width // stride), generator=gen)
        whole = F.interpolate(x, (height, width), mode="bilinear", align_corners=align_corners)
        windows = [(0, 0, height, width), (0, 0, 1, 1), (height - 1, width - 1, height, width)]
        for _ in range(40):
            top, left = (int(torch.randint(0, n, (), generator=gen)) for n in (height, width))
            bottom = int(torch.randint(top + 1, height + 1, (), generator=gen))
            right = int(torch.randint(left + 1, width + 1, (), generator=gen))
            windows.append((top, left, bottom, right))
        for top, left, bottom, right in windows:
            part = head.upsample(x, (height, width), (top, left, bottom, right))
            # torch's CPU kernel rounds differently with the output's width (vector lanes),
            # so equal up to float32 rounding; an interpolation off by one pixel is ~0.1
            torch.testing.assert_close(
                part, whole[..., top:bottom, left:right], rtol=1e-6, atol=2e-6
            )
        assert torch.equal(head.upsample(x, (height, width), None), whole)


def test_fusion_loss_masks_of_a_window_are_the_whole_masks_cropped():
    from e2emfd.boxes import box_codec

    sizes = torch.tensor([[40, 50], [30, 64]])
    boxes = [torch.tensor([[3.0, 4.0, 20.0, 33.0]]), torch.tensor([[10.0, 2.0, 60.0, 12.0]])]
    hbb = box_codec("hbb")
    whole_valid = valid_mask(sizes, 48, 64)
    whole_boxes = box_mask(boxes, 48, 64, hbb)
    for top, left in ((0, 0), (8, 20), (20, 33)):
        torch.testing.assert_close(
            valid_mask(sizes, 20, 24, (top, left)),
            whole_valid[..., top : top + 20, left : left + 24],
        )
        torch.testing.assert_close(
            box_mask(boxes, 20, 24, hbb, offset=(top, left)),
            whole_boxes[..., top : top + 20, left : left + 24],
        )


def test_training_on_fusion_windows_reaches_every_fusion_parameter():
    torch.manual_seed(0)
    model = tiny_model("model.fusion.train_crop=0.5").train()
    batch = _batch(2, 64, 96, [torch.tensor([[5.0, 5.0, 30.0, 40.0]]), torch.zeros(0, 4)])
    out = model(batch)
    loss = out["losses"]["fusion"]
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.fusion.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    window, region = model.fusion_window((64, 96))
    assert (region[2] - region[0], region[3] - region[1]) == (32, 48)
    assert window[0] == max(0, region[0] - 12) and window[3] == min(96, region[3] + 12)
    with pytest.raises(Exception, match="train_crop"):
        tiny_model("model.fusion.train_crop=0")


def test_stacked_inputs_follow_the_convolutions_layout():
    from e2emfd.models.orppt import stack_channels

    ir, vis = torch.rand(2, 1, 8, 12), torch.rand(2, 3, 8, 12)
    for layout in (torch.channels_last, torch.contiguous_format):
        like = torch.randn(6, 4, 3, 3).contiguous(memory_format=layout)
        inputs = [t.contiguous(memory_format=layout) for t in (ir, vis)]
        x0 = stack_channels(inputs, like)
        assert torch.equal(x0, torch.cat([ir, vis], 1))
        assert x0.is_contiguous(memory_format=layout)
