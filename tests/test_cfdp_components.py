"""Building blocks of the CFDP head: boxes, diffusion schedule, RoI pooling, one stage."""

import math

import numpy as np
import pytest
import torch
from torchvision.ops import roi_align

from e2emfd.boxes import box_codec
from e2emfd.boxes.axis_aligned import (
    apply_deltas,
    clip_boxes,
    image_whwh,
    normalize_boxes,
    signal_to_boxes,
)
from e2emfd.config import DetectionConfig
from e2emfd.models.detection.diffusion import BoxDiffusion, cosine_alphas_cumprod, ddim_timesteps
from e2emfd.models.detection.head import DynamicConv, RefinementStage, SinusoidalTimeEmbedding
from e2emfd.models.detection.pooler import MultiLevelRoIAlign, assign_levels
from e2emfd.models.detection.postprocess import topk_candidates

HBB = box_codec("hbb")

# ---------------------------------------------------------------------------- boxes


def test_box_signal_hand_values_and_round_trip():
    whwh = image_whwh(torch.tensor([[200, 100]]))  # h=200, w=100
    assert whwh.tolist() == [[100.0, 200.0, 100.0, 200.0]]
    box = torch.tensor([[[0.0, 0.0, 50.0, 100.0]]])
    # normalised cxcywh (0.25, 0.25, 0.5, 0.5) -> signal (2x - 1) * 2
    assert normalize_boxes(box, whwh[:, None]).tolist() == [[[0.25, 0.25, 0.5, 0.5]]]
    signal = HBB.to_signal(box, whwh[:, None], 2.0)
    assert signal.tolist() == [[[-1.0, -1.0, 0.0, 0.0]]]
    back = signal_to_boxes(signal, whwh[:, None], scale=2.0)
    torch.testing.assert_close(back, box)


def test_signal_to_boxes_clamps_to_the_scale():
    whwh = torch.tensor([[64.0, 32.0, 64.0, 32.0]])
    boxes = signal_to_boxes(torch.tensor([[[-9.0, 9.0, -9.0, 9.0]]]), whwh[:, None], 2.0)
    # cx = 0, cy = 1, w = 0, h = 1 (normalised)
    assert boxes.tolist() == [[[0.0, 16.0, 0.0, 48.0]]]


def test_apply_deltas_hand_values():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # centre (20, 40), size (20, 40)
    torch.testing.assert_close(apply_deltas(torch.zeros(1, 4), boxes), boxes)
    # dx = 2 with weight 2 -> one width right; dh = log 2 -> height doubled
    out = apply_deltas(torch.tensor([[2.0, 0.0, 0.0, math.log(2.0)]]), boxes)
    torch.testing.assert_close(out, torch.tensor([[30.0, 0.0, 50.0, 80.0]]))
    huge = apply_deltas(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), boxes)
    assert torch.isfinite(huge).all()


def test_clip_boxes():
    boxes = torch.tensor([[[-5.0, 3.0, 70.0, 40.0]], [[10.0, -1.0, 20.0, 90.0]]])
    whwh = torch.tensor([[64.0, 32.0, 64.0, 32.0], [50.0, 80.0, 50.0, 80.0]])
    out = clip_boxes(boxes, whwh)
    assert out.tolist() == [[[0.0, 3.0, 64.0, 32.0]], [[10.0, 0.0, 20.0, 80.0]]]


# ---------------------------------------------------------------------------- diffusion


def test_cosine_schedule_against_numpy():
    t_max, s = 1000, 0.008
    f = lambda t: np.cos((t / t_max + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    alphas = np.clip(np.array([f(t + 1) / f(t) for t in range(t_max)]), 0.001, 1.0)
    expected = np.cumprod(alphas)
    got = cosine_alphas_cumprod(t_max).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-300)
    assert np.all(np.diff(got) < 0) and 0 < got[-1] < 1e-4 and got[0] > 0.9999


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 1) == [(999, -1)]
    assert ddim_timesteps(1000, 4) == [(999, 749), (749, 499), (499, 249), (249, -1)]
    pairs = ddim_timesteps(10, 10)
    assert pairs[0] == (9, 8) and pairs[-1] == (0, -1) and len(pairs) == 10
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 0)


def test_q_sample_and_predict_noise_invert_each_other():
    diff = BoxDiffusion(1000)
    x0 = torch.randn(3, 5, 4)
    eps = torch.randn(3, 5, 4)
    t = torch.tensor([0, 500, 999])
    x_t = diff.q_sample(x0, t, eps)
    abar = cosine_alphas_cumprod(1000)
    for i, ti in enumerate(t.tolist()):
        ref = math.sqrt(abar[ti]) * x0[i].double() + math.sqrt(1 - abar[ti]) * eps[i].double()
        torch.testing.assert_close(x_t[i].double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(diff.predict_noise(x_t, t, x0), eps, rtol=1e-3, atol=2e-3)


def test_deterministic_ddim_stays_on_the_forward_trajectory():
    # eta = 0 with the true x0 and eps lands exactly on q(x_{t_next} | x0, same eps)
    diff = BoxDiffusion(1000, eta=0.0)
    x0, eps = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    out = diff.ddim_step(x0, eps, 700, 300)
    expected = diff.q_sample(x0, torch.tensor([300, 300]), eps)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_stochastic_ddim_has_the_forward_marginal_variance():
    # eta = 1: c^2 + sigma^2 = 1 - abar_next, so with eps and the fresh noise independent
    # standard normals, x_{t_next} - sqrt(abar_next) x0 has variance 1 - abar_next
    diff = BoxDiffusion(1000, eta=1.0)
    x0 = torch.zeros(200_000)
    out = diff.ddim_step(x0, torch.randn(200_000), 600, 200)
    assert out.var().item() == pytest.approx(1 - diff.alpha_bar(200), rel=0.02)


# ---------------------------------------------------------------------------- pooling


def test_assign_levels_hand_values():
    sides = [10.0, 111.0, 112.0, 224.0, 447.0, 448.0, 2000.0]
    boxes = torch.tensor([[0.0, 0.0, s, s] for s in sides])
    levels = assign_levels(HBB.area(boxes), (4, 8, 16, 32))
    # floor(4 + log2(side / 224)) - 2, clamped to [0, 3]
    assert levels.tolist() == [0, 0, 1, 2, 2, 3, 3]


def test_multilevel_roi_align_matches_per_box_reference():
    torch.manual_seed(1)
    strides = (4, 8, 16, 32)
    b, n, c, h, w = 2, 6, 3, 128, 160
    features = [torch.randn(b, c, h // s, w // s) for s in strides]
    xy = torch.rand(b, n, 2) * 60
    wh = torch.tensor([8.0, 40.0, 100.0, 130.0, 200.0, 300.0]).expand(b, n)[..., None]
    boxes = torch.cat([xy, xy + wh * torch.tensor([1.0, 0.7])], dim=-1)
    out = MultiLevelRoIAlign(HBB, strides, 7, 2)(features, boxes)
    assert out.shape == (b * n, c, 7, 7)
    for i in range(b):
        for j in range(n):
            x1, y1, x2, y2 = boxes[i, j].tolist()
            side = math.sqrt((x2 - x1) * (y2 - y1))
            lvl = min(max(math.floor(4 + math.log2(side / 224 + 1e-8)), 2), 5) - 2
            ref = roi_align(
                features[lvl][i : i + 1],
                [boxes[i, j][None]],
                7,
                spatial_scale=1 / strides[lvl],
                sampling_ratio=2,
                aligned=True,
            )
            torch.testing.assert_close(out[i * n + j], ref[0])


def test_multilevel_roi_align_rejects_non_doubling_strides():
    with pytest.raises(ValueError):
        MultiLevelRoIAlign(HBB, (4, 8, 32))


# ---------------------------------------------------------------------------- one stage


def test_time_embedding_hand_values():
    emb = SinusoidalTimeEmbedding(8)(torch.tensor([0, 3]))
    assert emb.shape == (2, 8)
    assert emb[0].tolist() == [0.0] * 4 + [1.0] * 4
    freqs = [10000 ** (-k / 3) for k in range(4)]
    expected = [math.sin(3 * f) for f in freqs] + [math.cos(3 * f) for f in freqs]
    torch.testing.assert_close(emb[1], torch.tensor(expected))


@pytest.mark.parametrize("num_dynamic", [1, 2, 3])
def test_dynamic_conv_matches_a_per_proposal_loop(num_dynamic):
    torch.manual_seed(2)
    hidden, dd, res, m = 8, 4, 3, 5
    conv = DynamicConv(hidden, dd, num_dynamic, res)
    pro, rois = torch.randn(m, hidden), torch.randn(m, res * res, hidden)
    out = conv(pro, rois)
    dims = [hidden] + [dd] * (num_dynamic - 1) + [hidden]
    for i in range(m):
        params = conv.dynamic_layer(pro[i])
        x, start = rois[i], 0
        for k, norm in enumerate(conv.norms):
            a, b = dims[k], dims[k + 1]
            x = torch.relu(norm(x @ params[start : start + a * b].reshape(a, b)))
            start += a * b
        ref = torch.relu(conv.out_norm(conv.out_layer(x.reshape(-1))))
        torch.testing.assert_close(out[i], ref, rtol=1e-5, atol=1e-5)


def _stage_inputs(b=3, n=5, hidden=16, res=7):
    rois = torch.randn(b * n, hidden, res, res)
    xy = torch.rand(b, n, 2) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(b, n, 2) * 30], dim=-1)
    return rois, boxes, torch.randn(b, 4 * hidden)


def test_stage_keeps_images_apart_and_is_permutation_equivariant():
    torch.manual_seed(3)
    stage = RefinementStage(num_classes=3, codec=HBB, hidden=16, num_heads=4, dim_dynamic=4,
                            dim_feedforward=32).eval()  # fmt: skip
    rois, boxes, temb = _stage_inputs()
    logits, new_boxes, obj = stage(rois, boxes, None, temb)
    assert logits.shape == (3, 5, 3) and new_boxes.shape == (3, 5, 4) and obj.shape == (3, 5, 16)
    assert new_boxes.dtype == torch.float32

    # changing image 1 leaves images 0 and 2 untouched
    rois2, boxes2 = rois.clone(), boxes.clone()
    rois2[5:10] += 1.0
    boxes2[1] += 3.0
    logits2, _, obj2 = stage(rois2, boxes2, None, temb)
    torch.testing.assert_close(logits2[[0, 2]], logits[[0, 2]])
    torch.testing.assert_close(obj2[[0, 2]], obj[[0, 2]])
    assert not torch.allclose(logits2[1], logits[1])

    # proposals are a set: permuting them within an image permutes the outputs
    perm = torch.tensor([4, 2, 0, 1, 3])
    rois_p = rois.view(3, 5, *rois.shape[1:])[:, perm].reshape_as(rois)
    logits_p, boxes_p, _ = stage(rois_p, boxes[:, perm], None, temb)
    torch.testing.assert_close(logits_p, logits[:, perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(boxes_p, new_boxes[:, perm], rtol=1e-5, atol=1e-4)


def test_stage_timestep_modulates_the_output():
    torch.manual_seed(4)
    stage = RefinementStage(num_classes=2, codec=HBB, hidden=16, num_heads=2, dim_dynamic=4,
                            dim_feedforward=32).eval()  # fmt: skip
    rois, boxes, temb = _stage_inputs(b=1)
    a = stage(rois, boxes, None, temb)[0]
    b = stage(rois, boxes, None, temb + 1.0)[0]
    assert not torch.allclose(a, b)


# ---------------------------------------------------------------------------- postprocess


def test_topk_candidates_hand_case():
    logits = torch.tensor([[[0.0, 3.0], [2.0, -1.0], [-2.0, 1.0]]])  # (1, 3 proposals, 2)
    boxes = torch.arange(12, dtype=torch.float32).view(1, 3, 4)
    scores, labels, picked = topk_candidates(logits, boxes, 3)
    torch.testing.assert_close(scores, torch.sigmoid(torch.tensor([[3.0, 2.0, 1.0]])))
    assert labels.tolist() == [[1, 0, 1]]
    assert picked[0].tolist() == [boxes[0, 0].tolist(), boxes[0, 1].tolist(), boxes[0, 2].tolist()]


def test_select_detections_hand_case():
    box = [10.0, 10.0, 30.0, 30.0]
    near = [11.0, 11.0, 31.0, 31.0]  # IoU ~0.82 with box
    outside = [70.0, 10.0, 90.0, 30.0]  # clipped to nothing in a 64-wide image
    boxes = torch.tensor([[box, near, near, outside, [40.0, 40, 50, 50]]] * 2)
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.95, 0.1], [0.9, 0.8, 0.7, 0.95, 0.1]])
    labels = torch.tensor([[0, 0, 1, 0, 2], [0, 0, 1, 0, 2]])
    whwh = torch.tensor([[64.0, 64, 64, 64], [64.0, 64, 64, 64]])

    def select(**kw):
        cfg = DetectionConfig(num_classes=3, nms_threshold=0.5, **kw)
        return HBB.select((scores, labels, boxes), whwh, cfg)

    out = select()
    # same-class duplicate removed, other class kept, empty box dropped, images apart
    for o in out:
        assert o["scores"].tolist() == pytest.approx([0.9, 0.7, 0.1])
        assert o["labels"].tolist() == [0, 1, 2]
        assert o["boxes"][0].tolist() == box
    capped = select(max_detections=2)
    assert [len(o["scores"]) for o in capped] == [2, 2]
    thresholded = select(score_threshold=0.5)
    assert thresholded[0]["labels"].tolist() == [0, 1]


@pytest.mark.parametrize("kind", ["hbb", "obb"])
def test_gather_pooling_equals_roi_align_per_level(kind):
    """The fixed-shape gather that CUDA inference uses gives torchvision's aligned RoIAlign
    (axis-aligned) or the rotated RoIAlign at each box's level, borders included."""
    from e2emfd.models.detection.pooler import flatten_pyramid

    gen = torch.Generator().manual_seed(2)
    strides = (4, 8, 16, 32)
    b, n, c, h, w = 2, 60, 5, 96, 128
    feats = [torch.randn(b, c, h // s, w // s, generator=gen) for s in strides]
    centre = torch.rand(b, n, 2, generator=gen) * torch.tensor([w + 60.0, h + 60.0]) - 30
    size = torch.exp(torch.rand(b, n, 2, generator=gen) * 7.0)  # 1 px .. 1100 px: every level
    if kind == "hbb":
        boxes = torch.cat([centre - size / 2, centre + size / 2], -1)
    else:
        boxes = torch.cat([centre, size, torch.rand(b, n, 1, generator=gen) * 6 - 3], -1)
    codec = box_codec(kind)
    pooler = MultiLevelRoIAlign(codec, strides, 7, 2)
    per_level = pooler(feats, boxes)  # on the CPU: one RoIAlign call per level
    flat = boxes.reshape(b * n, -1)
    levels = assign_levels(codec.area(flat), strides)
    assert len(levels.unique()) == 4
    gathered = pooler.pool_gather(flatten_pyramid(feats), flat, levels, n)
    torch.testing.assert_close(gathered, per_level, atol=1e-4, rtol=1e-4)
    assert pooler.prepare(feats) is feats  # the CPU keeps the per-level path
