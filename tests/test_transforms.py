import pytest
import torch

from e2emfd.config import DataConfig
from e2emfd.data import RandomHorizontalFlip, Resize, build_transforms, collate_pairs


def _sample(h=40, w=60, boxes=((5.0, 6.0, 25.0, 30.0), (40.0, 2.0, 59.0, 12.0))):
    vis = torch.zeros(3, h, w)
    ir = torch.zeros(1, h, w)
    for x1, y1, x2, y2 in boxes:  # paint each box so its position can be read off the image
        vis[:, int(y1) : int(y2), int(x1) : int(x2)] = 1.0
        ir[:, int(y1) : int(y2), int(x1) : int(x2)] = 1.0
    return {
        "vis": vis,
        "ir": ir,
        "boxes": torch.tensor(boxes),
        "labels": torch.arange(len(boxes)),
        "difficult": torch.zeros(len(boxes), dtype=torch.bool),
        "image_id": "x",
        "vis_path": "v",
        "ir_path": "i",
        "orig_size": torch.tensor([h, w]),
        "scale": torch.ones(2),
    }


def _painted_box(image: torch.Tensor, box: torch.Tensor) -> float:
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    return float(image[0, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].mean())


def test_flip_moves_boxes_with_pixels():
    flipped = RandomHorizontalFlip(p=1.0)(_sample())
    for box in flipped["boxes"]:
        assert _painted_box(flipped["vis"], box) == 1.0
        assert _painted_box(flipped["ir"], box) == 1.0
    twice = RandomHorizontalFlip(p=1.0)(flipped)
    assert torch.equal(twice["boxes"], _sample()["boxes"])


def test_resize_keeps_aspect_and_scales_boxes():
    out = Resize(short_side=80)(_sample())
    assert out["vis"].shape[-2:] == (80, 120) and out["ir"].shape[-2:] == (80, 120)
    torch.testing.assert_close(out["boxes"], _sample()["boxes"] * 2)
    torch.testing.assert_close(out["scale"], torch.tensor([2.0, 2.0]))
    for box in out["boxes"]:
        assert _painted_box(out["vis"], box) > 0.95


def test_resize_respects_max_size():
    out = Resize(short_side=80, max_size=90)(_sample())
    assert max(out["vis"].shape[-2:]) == 90


def test_scale_jitter_range():
    torch.manual_seed(1)
    sizes = {
        Resize(short_side=40, jitter=(0.5, 1.5))(_sample())["vis"].shape[-2] for _ in range(20)
    }
    assert min(sizes) >= 20 and max(sizes) <= 60 and len(sizes) > 3
    with pytest.raises(ValueError, match="scale jitter"):
        Resize(jitter=(1.2, 0.8))


def test_build_transforms_only_augments_in_training():
    cfg = DataConfig(hflip=1.0, scale_jitter=[0.5, 0.6])
    assert len(build_transforms(cfg, train=True).transforms) == 2
    assert len(build_transforms(cfg, train=False).transforms) == 0


@pytest.mark.parametrize("sizes", [[(40, 60)], [(40, 60), (33, 65), (64, 64)]])
def test_collate_pads_to_multiple_of_32(sizes):
    batch = collate_pairs([_sample(h, w) for h, w in sizes])
    b, _, H, W = batch["vis"].shape
    assert b == len(sizes) and H % 32 == 0 and W % 32 == 0
    assert H >= max(h for h, _ in sizes) and W >= max(w for _, w in sizes)
    assert batch["image_sizes"].tolist() == [list(s) for s in sizes]
    for i, (h, w) in enumerate(sizes):
        assert (
            batch["vis"][i, :, h:, :].abs().sum() == 0 and batch["ir"][i, :, :, w:].abs().sum() == 0
        )
    assert len(batch["targets"]) == len(sizes)


def test_rotated_boxes_follow_resize_and_flip():
    import math

    from e2emfd.boxes import box_codec
    from e2emfd.ops.rotated import obb_to_poly

    sample = _sample()
    sample["boxes"] = torch.tensor([[20.0, 15.0, 16.0, 6.0, math.pi / 6]])
    obb = box_codec("obb")
    resized = Resize(short_side=80, codec=obb)(sample)
    torch.testing.assert_close(
        obb_to_poly(resized["boxes"]), obb_to_poly(sample["boxes"]) * 2, atol=1e-4, rtol=0
    )
    flipped = RandomHorizontalFlip(p=1.0, codec=obb)(sample)
    corners = obb_to_poly(sample["boxes"]).view(4, 2)
    mirrored = torch.stack([60 - corners[:, 0], corners[:, 1]], 1)
    got = obb_to_poly(flipped["boxes"]).view(4, 2)
    # the same rectangle: every mirrored corner is one of the flipped box's corners
    assert torch.cdist(mirrored, got).min(1).values.max() < 1e-4
