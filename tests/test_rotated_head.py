"""The CFDP head on rotated boxes: box parameterisation, Gaussian loss, matching,
post-processing and the head end to end on tiny inputs."""

import math

import pytest
import torch

from e2emfd.boxes import box_codec
from e2emfd.boxes.rotated import (
    angle_cost,
    apply_obb_deltas,
    image_scale,
    normalize_obb,
    random_normalized_obb,
    rotated_centre_prior,
    signal_to_obb,
)
from e2emfd.config import DetectionConfig
from e2emfd.losses.detection import gaussian_kld, kld_loss
from e2emfd.losses.detection import rotated_box_l1 as box_l1
from e2emfd.models.detection import CFDPHead, DynamicKMatcher, RefinementStage

OBB = box_codec("obb")

HIDDEN = 32
STRIDES = (4, 8, 16, 32)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(**kw) -> DetectionConfig:
    base = dict(
        boxes="obb",
        num_classes=3,
        hidden=HIDDEN,
        num_stages=2,
        num_heads=4,
        dim_dynamic=8,
        dim_feedforward=64,
        num_proposals=16,
        max_detections=20,
    )
    base.update(kw)
    return DetectionConfig(**base)


def _features(b: int, h: int, w: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        f"p{i + 2}": torch.randn(b, HIDDEN, h // s, w // s, generator=gen)
        for i, s in enumerate(STRIDES)
    }


def _target(boxes, labels, seed=None):
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 5),
        "labels": torch.tensor(labels, dtype=torch.long),
    }
    if seed is not None:
        out["seed"] = seed
    return out


def _angle_diff(a, b):
    d = torch.remainder(a - b, math.pi)
    return torch.minimum(d, math.pi - d)


# ------------------------------------------------------------------- box parameterisation


def test_image_scale_and_normalisation_by_hand():
    scale = image_scale(torch.tensor([[30, 40]]))  # h=30, w=40 -> diagonal 50
    torch.testing.assert_close(scale, torch.tensor([[40.0, 30.0, 50.0, 50.0]]))
    box = torch.tensor([[20.0, 15.0, 25.0, 10.0, -math.pi / 4]])
    torch.testing.assert_close(
        normalize_obb(box, scale), torch.tensor([[0.5, 0.5, 0.5, 0.2, 0.25]])
    )


def test_signal_round_trip_and_angle_wrap():
    scale = image_scale(torch.tensor([[64, 96]]))
    gen = torch.Generator().manual_seed(0)
    boxes = torch.cat(
        [
            torch.rand(50, 2, generator=gen) * torch.tensor([96.0, 64.0]),
            torch.rand(50, 2, generator=gen) * 40 + 1,
            (torch.rand(50, 1, generator=gen) - 0.5) * math.pi,
        ],
        dim=1,
    )
    boxes[:, 2:4] = boxes[:, 2:4].sort(dim=1, descending=True).values  # le90: w >= h
    signal = OBB.to_signal(boxes, scale, 2.0)
    assert signal.abs().max() <= 2.0
    back = signal_to_obb(signal, scale, 2.0)
    torch.testing.assert_close(back[:, :4], boxes[:, :4], atol=1e-4, rtol=1e-5)
    assert _angle_diff(back[:, 4], boxes[:, 4]).max() < 1e-5
    # the angle channel is periodic: +1 period (2 * scale) is the same box, and a signal
    # just past +scale is an angle just past -pi/2
    shifted = signal.clone()
    shifted[:, 4] += 4.0
    torch.testing.assert_close(signal_to_obb(shifted, scale, 2.0), back, atol=1e-4, rtol=1e-5)
    past = signal_to_obb(torch.tensor([[0.0, 0.0, 0.0, -0.5, 2.2]]), scale, 2.0)
    assert past[0, 4] == pytest.approx(-math.pi / 2 + 0.2 * math.pi / 4, abs=1e-5)
    # sizes never collapse to zero
    tiny = signal_to_obb(torch.full((1, 5), -5.0), scale, 2.0)
    assert (tiny[:, 2:4] > 0).all()


def test_random_boxes_are_seeded_and_in_range():
    a = random_normalized_obb(100, generator=torch.Generator().manual_seed(1))
    b = random_normalized_obb(100, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (100, 5)
    assert (a[:, 2:4] > 0).all() and (a[:, 4] >= 0).all() and (a[:, 4] < 1).all()


def test_apply_obb_deltas_moves_in_the_box_frame():
    boxes = torch.tensor([[50.0, 40.0, 20.0, 10.0, math.pi / 6]])
    torch.testing.assert_close(apply_obb_deltas(torch.zeros(1, 5), boxes), boxes)
    # dx = 2 (weight 2) moves one box width along the w side; dy = 2 one height along h
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    out = apply_obb_deltas(torch.tensor([[2.0, 2.0, math.log(2), 0.0, 0.1]]), boxes)
    expected = torch.tensor(
        [[50 + 20 * c - 10 * s, 40 + 20 * s + 10 * c, 40, 10, math.pi / 6 + 0.1]]
    )
    torch.testing.assert_close(out, expected)
    # a size change that makes h the long side is renormalised to le90
    swapped = apply_obb_deltas(torch.tensor([[0.0, 0.0, 0.0, math.log(4), 0.0]]), boxes)
    torch.testing.assert_close(
        swapped, torch.tensor([[50.0, 40.0, 40.0, 20.0, math.pi / 6 - math.pi / 2]])
    )


# ---------------------------------------------------------------------- loss and matching


def _kld_reference(p, t):
    """KL(N_p || N_t) from the covariance matrices with torch.linalg (float64)."""

    def gaussian(box):
        cx, cy, w, h, a = box.tolist()
        r = torch.tensor(
            [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64
        )
        return torch.tensor([cx, cy], dtype=torch.float64), r @ torch.diag(
            torch.tensor([w * w / 4, h * h / 4], dtype=torch.float64)
        ) @ r.T

    mp, sp = gaussian(p)
    mt, st = gaussian(t)
    inv = torch.linalg.inv(st)
    d = (mp - mt)[:, None]
    return 0.5 * (
        torch.trace(inv @ sp) + (d.T @ inv @ d).item() - 2 + math.log(torch.det(st) / torch.det(sp))
    )


def test_gaussian_kld_matches_the_matrix_formula():
    gen = torch.Generator().manual_seed(2)
    pred = torch.cat(
        [
            torch.rand(20, 2, generator=gen) * 30,
            torch.rand(20, 2, generator=gen) * 20 + 2,
            torch.randn(20, 1, generator=gen) * 2,
        ],
        dim=1,
    ).double()
    target = torch.cat(
        [
            torch.rand(20, 2, generator=gen) * 30,
            torch.rand(20, 2, generator=gen) * 20 + 2,
            torch.randn(20, 1, generator=gen) * 2,
        ],
        dim=1,
    ).double()
    got = gaussian_kld(pred, target)
    ref = torch.tensor([_kld_reference(p, t) for p, t in zip(pred, target)], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def test_kld_loss_is_zero_for_equal_boxes_and_blind_to_the_parameterisation():
    box = torch.tensor([[10.0, 20.0, 16.0, 4.0, 0.3]], dtype=torch.float64)
    same = [
        box,
        torch.tensor([[10.0, 20.0, 4.0, 16.0, 0.3 + math.pi / 2]], dtype=torch.float64),
        torch.tensor([[10.0, 20.0, 16.0, 4.0, 0.3 - math.pi]], dtype=torch.float64),
    ]
    for other in same:
        assert float(kld_loss(other, box)) == pytest.approx(0.0, abs=1e-12)
    # a turned long box costs more than the same turn of a near-square one
    turned = box.clone()
    turned[0, 4] += 0.3
    square = torch.tensor([[10.0, 20.0, 8.0, 7.9, 0.3]], dtype=torch.float64)
    square_turned = square.clone()
    square_turned[0, 4] += 0.3
    assert float(kld_loss(turned, box)) > 5 * float(kld_loss(square_turned, square))
    # bounded below 1 and finite for a degenerate prediction, with gradients
    pred = torch.tensor([[500.0, 20.0, 0.0, 0.0, 0.0]], requires_grad=True)
    loss = kld_loss(pred, box.float())
    loss.sum().backward()
    assert 0 < float(loss.detach()) < 1 and torch.isfinite(pred.grad).all()


def test_rotated_centre_prior_by_hand():
    gt = torch.tensor([[50.0, 50.0, 20.0, 4.0, math.pi / 2]])  # long side along y
    proposals = torch.tensor(
        [
            [50.0, 58.0, 1, 1, 0],  # 8 px along the long side: inside
            [58.0, 50.0, 1, 1, 0],  # 8 px across: outside the box (half-height 2)
            [58.0, 50.0, 1, 1, 0],
            [50.0, 100.0, 1, 1, 0],  # 50 px along: beyond 2.5 widths (50) -> not in centre
        ]
    )
    in_box, in_centre = rotated_centre_prior(proposals, gt)
    assert in_box[:, 0].tolist() == [True, False, False, False]
    assert in_centre[:, 0].tolist() == [True, True, True, False]


def test_matcher_pairs_each_gt_with_the_proposal_on_it():
    gt = torch.tensor([[30.0, 30.0, 24.0, 8.0, 0.5], [70.0, 40.0, 30.0, 10.0, -1.0]])
    proposals = torch.tensor(
        [
            [70.0, 40.0, 30.0, 10.0, -1.0],
            [30.5, 30.0, 24.0, 8.0, 0.45],
            [90.0, 90.0, 5.0, 5.0, 0.0],
            [30.0, 30.0, 24.0, 8.0, 0.5 + math.pi / 2],  # right centre, crossed: low IoU
        ]
    )
    logits = torch.zeros(4, 3)
    scale = image_scale(torch.tensor([[100, 120]]))[0]
    p, g = DynamicKMatcher(OBB, DetectionConfig(boxes="obb", ota_k=1))(
        logits, proposals, gt, torch.tensor([0, 1]), scale
    )
    assert dict(zip(p.tolist(), g.tolist())) == {0: 1, 1: 0}


# ------------------------------------------------------------------------ post-processing


def test_select_rotated_detections_nms_groups_and_image_bounds():
    boxes = torch.tensor(
        [
            [
                [20.0, 20.0, 16.0, 6.0, 0.3],
                [20.5, 20.0, 16.0, 6.0, 0.32],  # duplicate of 0, same class: removed
                [20.5, 20.0, 16.0, 6.0, 0.32],  # same box, other class: kept
                [20.0, 20.0, 16.0, 6.0, 0.3 + math.pi / 2],  # crossed: IoU < 0.5, kept
                [-3.0, 20.0, 16.0, 6.0, 0.0],  # centre outside the image: dropped
                [40.0, 30.0, 10.0, 4.0, 1.0],
            ]
        ]
    )
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.95, 0.5]])
    labels = torch.tensor([[0, 0, 1, 0, 0, 2]])
    scale = OBB.image_scale(torch.tensor([[48, 64]]))
    out = OBB.select((scores, labels, boxes), scale, _cfg())[0]
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.7, 0.6, 0.5]))
    assert out["labels"].tolist() == [0, 1, 0, 2]
    capped = _cfg(max_detections=2, score_threshold=0.65)
    two = OBB.select((scores, labels, boxes), scale, capped)[0]
    assert two["scores"].tolist() == pytest.approx([0.9, 0.7])


# ------------------------------------------------------------------------------- the head


def test_head_takes_the_box_kind_from_the_config():
    assert CFDPHead(_cfg(), in_channels=HIDDEN).codec.kind == "obb"
    assert CFDPHead(_cfg(boxes="hbb"), in_channels=HIDDEN).codec.kind == "hbb"
    with pytest.raises(ValueError, match="box kind"):
        CFDPHead(_cfg(boxes="xyxy"), in_channels=HIDDEN)


def test_stage_regresses_five_numbers():
    stage = RefinementStage(3, OBB, hidden=HIDDEN, num_heads=4, dim_dynamic=8, dim_feedforward=64)
    assert stage.box_deltas.out_features == 5


@pytest.mark.parametrize(
    "targets",
    [
        [_target([[30, 30, 20, 8, 0.3], [80, 50, 30, 10, -1.2]], [0, 2])],
        [
            _target([[30, 30, 20, 8, 0.3]], [1]),
            _target([], []),  # an image without objects
            _target([[10, 60, 12, 12, 0.0], [60, 20, 40, 6, 1.5]], [2, 0]),
        ],
        [_target([], [])],
    ],
    ids=["B1", "B3-with-empty", "B1-empty"],
)
def test_training_losses_are_finite_and_reach_every_stage(targets):
    head = CFDPHead(_cfg(), in_channels=HIDDEN).train()
    b = len(targets)
    feats = _features(b, 96, 128)
    sizes = torch.tensor([[96, 128], [90, 120], [96, 100]][:b])
    losses = head(feats, sizes, targets)
    assert set(losses) == {"loss_cls", "loss_l1", "loss_giou"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    has_objects = any(len(t["labels"]) for t in targets)
    for stage in head.stages:
        assert stage.class_logits.weight.grad.abs().sum() > 0
        reg = stage.box_deltas.weight.grad.abs().sum()
        assert (reg > 0) if has_objects else (reg == 0)
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_kld_shape_loss_option():
    head = CFDPHead(_cfg(shape_loss="kld"), in_channels=HIDDEN).train()
    losses = head(
        _features(1, 64, 64), torch.tensor([[64, 64]]), [_target([[30, 30, 20, 8, 0.3]], [0])]
    )
    assert set(losses) == {"loss_cls", "loss_l1", "loss_kld"}
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="shape_loss"):
        CFDPHead(_cfg(shape_loss="iou"), in_channels=HIDDEN)
    with pytest.raises(ValueError, match="shape_loss"):
        CFDPHead(_cfg(boxes="hbb", shape_loss="kld"), in_channels=HIDDEN)


def test_seeded_targets_are_noised_the_same_way_in_any_batch():
    head = CFDPHead(_cfg(), in_channels=HIDDEN)
    t = _target([[30, 30, 20, 8, 0.3]], [1], seed=5)
    scale = image_scale(torch.tensor([[96, 128], [64, 64]]))
    alone, t_alone = head.diffuse_targets([t], scale[:1])
    pair, t_pair = head.diffuse_targets([t, _target([], [], seed=9)], scale)
    torch.testing.assert_close(alone[0], pair[0])
    assert t_alone[0] == t_pair[0]
    assert alone.shape == (1, 16, 5) and (alone[..., 2:4] > 0).all()


@pytest.mark.parametrize("steps", [1, 4])
def test_inference_outputs_le90_boxes_in_the_image(steps):
    head = CFDPHead(_cfg(score_threshold=0.0), in_channels=HIDDEN).eval()
    sizes = torch.tensor([[96, 128], [80, 100], [96, 96]])
    out = head(_features(3, 96, 128), sizes, sampling_steps=steps)
    assert len(out) == 3
    for det, (h, w) in zip(out, sizes.tolist()):
        boxes = det["boxes"]
        assert boxes.shape[1] == 5 and 0 < len(boxes) <= 20
        assert det["scores"].shape == det["labels"].shape == (len(boxes),)
        assert torch.isfinite(boxes).all()
        assert (boxes[:, 2] >= boxes[:, 3]).all() and (boxes[:, 3] > 0).all()
        assert (boxes[:, 4] >= -math.pi / 2).all() and (boxes[:, 4] < math.pi / 2).all()
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] <= w).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] <= h).all()
        assert (det["scores"][1:] <= det["scores"][:-1]).all()
        assert det["labels"].dtype == torch.long and (det["labels"] < 3).all()
    more = head(_features(1, 96, 128), sizes[:1], num_proposals=40, sampling_steps=steps)
    assert len(more[0]["boxes"]) <= 20


def test_tiny_overfit_on_one_batch_lowers_the_loss():
    torch.manual_seed(0)
    head = CFDPHead(_cfg(num_proposals=12), in_channels=HIDDEN).train()
    feats = _features(2, 64, 96, seed=3)
    sizes = torch.tensor([[64, 96], [64, 96]])
    targets = [
        _target([[30, 30, 24, 8, 0.4], [70, 40, 30, 10, -1.0]], [0, 2], seed=1),
        _target([[50, 20, 16, 6, 1.2]], [1], seed=2),
    ]
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    history = []
    for _ in range(40):
        losses = head(feats, sizes, targets)
        total = sum(losses.values())
        history.append({k: v.item() for k, v in losses.items()})
        opt.zero_grad()
        total.backward()
        opt.step()
    first, last = history[0], history[-1]
    assert sum(last.values()) < 0.5 * sum(first.values())
    assert last["loss_giou"] < first["loss_giou"] and last["loss_l1"] < first["loss_l1"]


def test_angle_cost_wraps_with_period_pi_and_ignores_squares():
    target = torch.tensor(
        [[0.0, 0, 20, 5, 1.5], [0.0, 0, 20, 5, math.pi / 2 - 0.1], [0.0, 0, 6, 6, 0.3]]
    )
    pred = torch.tensor([-1.5, 0.1, 1.2])
    got = angle_cost(pred, target)
    elongation = 1 - 5 / 20
    expected = torch.tensor(
        [(math.pi - 3.0) / math.pi * elongation, (math.pi / 2 - 0.2) / math.pi * elongation, 0.0]
    )
    torch.testing.assert_close(got, expected)
    # box L1 = normalised centre/size L1 + the angle cost
    scale = torch.tensor([100.0, 50.0, 10.0, 10.0])
    p = torch.tensor([[10.0, 5.0, 22.0, 4.0, -1.5]])
    t = torch.tensor([[11.0, 5.0, 20.0, 5.0, 1.5]])
    torch.testing.assert_close(box_l1(p, t, scale), torch.tensor([0.01 + 0.2 + 0.1]) + got[:1])
