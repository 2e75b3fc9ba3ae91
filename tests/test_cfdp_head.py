"""The CFDP head end to end: training losses and DDIM inference on tiny inputs."""

import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from e2emfd.config import DetectionConfig
from e2emfd.models.detection import CFDPHead

HIDDEN = 32
STRIDES = (4, 8, 16, 32)


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: threads only add contention on a shared machine (~8x faster here)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(**kw) -> DetectionConfig:
    base = dict(
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


def _features(b: int, h: int, w: int) -> dict[str, torch.Tensor]:
    return {f"p{i + 2}": torch.randn(b, HIDDEN, h // s, w // s) for i, s in enumerate(STRIDES)}


def _target(boxes, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


def _empty():
    return _target([], [])


# ---------------------------------------------------------------------------- training


def test_training_losses_are_finite_and_reach_every_stage():
    head = CFDPHead(_cfg(), in_channels=HIDDEN).train()
    feats = _features(2, 96, 128)
    sizes = torch.tensor([[90, 128], [96, 100]])
    targets = [
        _target([[10, 10, 40, 50], [60, 20, 100, 80]], [0, 2]),
        _target([[5, 5, 30, 30]], [1]),
    ]
    losses = head(feats, sizes, targets)
    assert set(losses) == {"loss_cls", "loss_l1", "loss_giou"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for stage in head.stages:
        assert stage.class_logits.weight.grad.abs().sum() > 0
        assert stage.box_deltas.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "targets",
    [
        [_empty()],
        [_empty(), _empty(), _empty()],
        [_target([[3, 4, 20, 30]], [2]), _empty()],
    ],
    ids=["one-empty", "all-empty", "mixed"],
)
def test_images_without_objects_train(targets):
    head = CFDPHead(_cfg(), in_channels=HIDDEN).train()
    b = len(targets)
    feats = _features(b, 64, 64)
    losses = head(feats, torch.tensor([[64, 64]] * b), targets)
    assert all(torch.isfinite(v) for v in losses.values())
    if all(len(t["labels"]) == 0 for t in targets):
        assert losses["loss_l1"].item() == 0 and losses["loss_giou"].item() == 0
        assert losses["loss_cls"].item() > 0
    sum(losses.values()).backward()


def test_more_objects_than_proposals():
    head = CFDPHead(_cfg(num_proposals=4), in_channels=HIDDEN).train()
    boxes = [[4.0 * i, 4.0 * i, 4.0 * i + 10, 4.0 * i + 12] for i in range(9)]
    losses = head(_features(1, 64, 64), torch.tensor([[64, 64]]), [_target(boxes, [0] * 9)])
    assert all(torch.isfinite(v) for v in losses.values())


def test_diffused_training_boxes():
    head = CFDPHead(_cfg(num_proposals=10), in_channels=HIDDEN).train()
    whwh = torch.tensor([[128.0, 96, 128, 96], [64.0, 64, 64, 64]])
    targets = [_target([[10, 10, 40, 50]], [0]), _empty()]
    boxes, t = head.diffuse_targets(targets, whwh)
    assert boxes.shape == (2, 10, 4) and t.shape == (2,) and t.dtype == torch.long
    assert ((t >= 0) & (t < head.cfg.timesteps)).all()
    # clamped signal: boxes have non-negative size and centres inside the image
    assert (boxes[..., 2:] >= boxes[..., :2]).all()
    centres = (boxes[..., :2] + boxes[..., 2:]) / 2
    assert (centres >= 0).all() and (centres <= whwh[:, None, :2]).all()


def test_bf16_autocast_on_cpu():
    head = CFDPHead(_cfg(), in_channels=HIDDEN)
    feats = _features(2, 64, 96)
    sizes = torch.tensor([[64, 96], [60, 90]])
    targets = [_target([[10, 10, 40, 50]], [0]), _target([[30, 5, 80, 40]], [1])]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = head.train()(feats, sizes, targets)
        assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
        sum(losses.values()).backward()
        out = head.eval()(feats, sizes, sampling_steps=2)
    assert out[0]["boxes"].dtype == torch.float32


def test_boxes_are_detached_between_stages():
    head = CFDPHead(_cfg(num_stages=3), in_channels=HIDDEN)
    feats = list(_features(1, 64, 64).values())
    boxes = torch.tensor([[[10.0, 10, 40, 40], [20, 5, 60, 30]]])
    logits, stage_boxes = head.refine(feats, boxes, torch.tensor([500]))
    # stage 2's boxes depend on stage 1's box layer only through the detached boxes
    stage_boxes[1].sum().backward(retain_graph=True)
    assert head.stages[0].box_deltas.weight.grad is None
    assert head.stages[1].box_deltas.weight.grad.abs().sum() > 0
    # while the proposal features are passed on with their gradient
    head.zero_grad()
    logits[1].sum().backward()
    assert head.stages[0].ffn[0].weight.grad.abs().sum() > 0


def test_config_checks():
    with pytest.raises(ValueError):
        CFDPHead(_cfg(), in_channels=HIDDEN * 2)
    with pytest.raises(ValueError, match="box kind"):
        CFDPHead(_cfg(boxes="quad"), in_channels=HIDDEN)


def test_prior_probability_initialisation():
    head = CFDPHead(_cfg(prior_prob=0.01), in_channels=HIDDEN)
    for stage in head.stages:
        torch.testing.assert_close(
            torch.sigmoid(stage.class_logits.bias), torch.full((3,), 0.01), rtol=1e-4, atol=0
        )


# ---------------------------------------------------------------------------- inference


@pytest.mark.parametrize("steps", [1, 4, 8])
@pytest.mark.parametrize("batch", [1, 3])
def test_inference_outputs(steps, batch):
    cfg = _cfg(max_detections=25)
    head = CFDPHead(cfg, in_channels=HIDDEN).eval()
    # an untrained head may throw every box out of a small image; with zero deltas the
    # detections are the (clipped) noise proposals, so each image has some
    for stage in head.stages:
        nn.init.zeros_(stage.box_deltas.weight)
        nn.init.zeros_(stage.box_deltas.bias)
    sizes = torch.tensor([[96, 128], [70, 100], [96, 50]][:batch])
    out = head(_features(batch, 96, 128), sizes, num_proposals=24, sampling_steps=steps)
    assert isinstance(out, list) and len(out) == batch
    for o, (h, w) in zip(out, sizes.tolist()):
        k = o["boxes"].shape[0]
        assert 0 < k <= 25 and o["scores"].shape == (k,) and o["labels"].shape == (k,)
        assert o["labels"].dtype == torch.long
        assert ((o["labels"] >= 0) & (o["labels"] < 3)).all()
        bx = o["boxes"]
        assert (bx >= 0).all() and (bx[:, [0, 2]] <= w).all() and (bx[:, [1, 3]] <= h).all()
        assert (bx[:, 2:] >= bx[:, :2]).all()
        assert ((o["scores"] >= 0) & (o["scores"] <= 1)).all()
        assert (o["scores"][:-1] >= o["scores"][1:]).all()


@pytest.mark.parametrize(
    "flags", [dict(), dict(box_renewal=False), dict(use_ensemble=False), dict(num_proposals_test=9)]
)
def test_inference_is_deterministic_under_a_seed(flags):
    head = CFDPHead(_cfg(**flags), in_channels=HIDDEN).eval()
    feats = _features(2, 64, 64)
    sizes = torch.tensor([[64, 64], [50, 60]])
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append(head(feats, sizes, sampling_steps=3))
    for a, b in zip(*runs):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key])
    torch.manual_seed(124)
    other = head(feats, sizes, sampling_steps=3)
    assert not torch.equal(other[0]["scores"], runs[0][0]["scores"])


def test_the_noise_input_is_every_random_draw_of_the_ddim_loop():
    """With box renewal and stochastic DDIM updates (eta 1), the loop's result depends on
    its noise input only, not on the global generator (what CUDA graphs and ONNX need)."""
    # renewal threshold 0: every proposal is kept, so each DDIM update's noise matters
    head = CFDPHead(_cfg(ddim_eta=1.0, renewal_threshold=0.0), in_channels=HIDDEN).eval()
    feats = [f for f in _features(2, 64, 64).values()]
    scale = head.box_scale(torch.tensor([[64, 64], [50, 60]]))
    noise = head.draw_noise(2, 10, 3, "cpu")
    assert noise.shape == (5, 2, 10, 4) and head.noise_steps(noise) == 3
    torch.manual_seed(1)
    first = head.candidates(feats, scale, noise)
    torch.manual_seed(2)
    second = head.candidates(feats, scale, noise)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    changed = noise.clone()
    changed[3] += 1.0  # the first DDIM update's noise
    third = head.candidates(feats, scale, changed)
    assert not torch.equal(third[2], first[2])


def test_inference_nms_removes_duplicates_per_class():
    head = CFDPHead(_cfg(nms_threshold=0.5, max_detections=100), in_channels=HIDDEN).eval()
    out = head(_features(1, 64, 64), torch.tensor([[64, 64]]), sampling_steps=4)[0]
    assert len(out["labels"]) > 3
    bx = out["boxes"]
    assert ((bx[:, 2] > bx[:, 0]) & (bx[:, 3] > bx[:, 1])).all()  # no empty boxes
    iou = box_iou(bx, bx).fill_diagonal_(0)
    same_class = out["labels"][:, None] == out["labels"][None, :]
    assert (iou[same_class] <= 0.5 + 1e-6).all()


# ---------------------------------------------------------------------------- learning


class TinyPyramid(nn.Module):
    """3 x H x W -> P2..P5 with HIDDEN channels (stride 4, 8, 16, 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, HIDDEN, 3, 2, 1), nn.ReLU()
        )
        self.downs = nn.ModuleList(nn.Conv2d(HIDDEN, HIDDEN, 3, 2, 1) for _ in range(3))

    def forward(self, x):
        feats = {"p2": self.stem(x)}
        for i, down in enumerate(self.downs):
            feats[f"p{i + 3}"] = torch.relu(down(feats[f"p{i + 2}"]))
        return feats


def _rectangles():
    """Two dark 64x64 images with bright red (class 0) and green (class 1) rectangles."""
    images = torch.zeros(2, 3, 64, 64)
    objs = [[(8, 10, 30, 40, 0), (36, 30, 60, 56, 1)], [(20, 4, 50, 24, 1)]]
    targets = []
    for i, rects in enumerate(objs):
        for x1, y1, x2, y2, c in rects:
            images[i, c, y1:y2, x1:x2] = 1.0
        targets.append(_target([r[:4] for r in rects], [r[4] for r in rects]))
    return images, targets


def _fixed_draw_loss(backbone, head, images, sizes, targets) -> float:
    """Training loss averaged over four fixed diffusion draws (timesteps, noise, padding),
    so that before/after comparisons are not swamped by the draw."""
    state = torch.get_rng_state()
    total = 0.0
    with torch.no_grad():
        for seed in range(4):
            torch.manual_seed(100 + seed)
            total += sum(head(backbone(images), sizes, targets).values()).item()
    torch.set_rng_state(state)
    return total / 4


def test_loss_decreases_when_overfitting_one_batch():
    torch.manual_seed(0)
    backbone = TinyPyramid()
    head = CFDPHead(_cfg(num_classes=2, num_proposals=16), in_channels=HIDDEN).train()
    images, targets = _rectangles()
    sizes = torch.tensor([[64, 64], [64, 64]])
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=1e-3)
    before = _fixed_draw_loss(backbone, head, images, sizes, targets)
    for _ in range(40):
        loss = sum(head(backbone(images), sizes, targets).values())
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _fixed_draw_loss(backbone, head, images, sizes, targets)
    assert after < 0.65 * before, (before, after)
