"""The training engine: every balancing method, GMTA on the real model, non-finite steps,
checkpoint safety, schedules and the sampler."""

import json
import pickle

import pytest
import torch

from conftest import TINY_JOINT
from e2emfd.config import TrainConfig, load_config
from e2emfd.data import build_dataset, build_transforms, collate_pairs
from e2emfd.engine import checkpoint as ckpt
from e2emfd.engine.optim import lr_factor
from e2emfd.engine.sampler import TrainSampler
from e2emfd.engine.trainer import NonFiniteLossError, train
from e2emfd.models import build_model
from e2emfd.models.e2emfd import E2EMFD
from e2emfd.mtl import METHODS, TaskBalancer, gmta_weights


def _cfg(root, out, *extra):
    return load_config(None, TINY_JOINT + [f"data.root={root}", f"output_dir={out}", *extra])


@pytest.mark.parametrize("method", METHODS)
def test_every_balancing_method_runs_joint_steps(synth_small, tmp_path, method):
    cfg = _cfg(synth_small, tmp_path, f"train.mtl={method}", "train.max_iters=2")
    before = {k: v.clone() for k, v in build_model(cfg.model).state_dict().items()}
    result = train(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert all(r["loss_detection"] > 0 and r["loss_fusion"] > 0 for r in log)
    if method != "sum":
        assert all("mtl/cos" in r and "mtl/cond_before" in r for r in log)
    after = ckpt.load_checkpoint(result.checkpoint)["model"]
    changed = [
        k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])
    ]
    assert changed  # the model trained


def test_gmta_step_writes_the_aligned_gradient_to_every_shared_parameter(synth_small):
    cfg = load_config(None, TINY_JOINT + [f"data.root={synth_small}"])
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    dataset = build_dataset(cfg.data, "train", build_transforms(cfg.data, train=False))
    batch = collate_pairs([dataset[(i, 100 + i)] for i in range(2)])
    shared = model.shared_parameters()

    def task_grads():
        out = model(batch)
        return [
            torch.autograd.grad(out["losses"][t], shared, allow_unused=True, retain_graph=True)
            for t in ("detection", "fusion")
        ]

    state = torch.get_rng_state()
    g_det, g_fus = task_grads()
    flat = torch.stack(
        [
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).flatten()
                    for g, p in zip(gs, shared)
                ]
            )
            for gs in (g_det, g_fus)
        ]
    ).double()
    w = gmta_weights(flat @ flat.T)
    expected = w[0] * flat[0] + w[1] * flat[1]

    torch.set_rng_state(state)  # same diffusion noise as above
    model.zero_grad()
    stats = TaskBalancer("gmta", shared).backward(model(batch)["losses"], step=0)
    got = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in shared]
    )
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-9)
    assert stats["cond_after"] == pytest.approx(1.0, abs=1e-6)
    # Every shared tensor that a task reaches gets a .grad other than the plain sum (the
    # public code left them all unchanged). Tensors only one task reaches are rescaled.
    # (At 128x96 no box is large enough for the P5 level, so its FPN output conv is unused.)
    reached = 0
    for p, gd, gf in zip(shared, g_det, g_fus):
        if gd is None and gf is None:
            continue
        reached += 1
        plain_p = sum(g for g in (gd, gf) if g is not None)
        assert not torch.equal(p.grad, plain_p), p.shape
    assert reached >= len(shared) - 2


def test_non_finite_losses_are_skipped_then_stop_the_run(synth_small, tmp_path, monkeypatch):
    real_forward = E2EMFD.forward
    calls = {"n": 0}

    def flaky(self, batch, tasks=None, **kwargs):
        out = real_forward(self, batch, tasks, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2 or calls["n"] >= 4:  # one bad step, then bad forever
            out["losses"]["fusion"] = out["losses"]["fusion"] * float("nan")
        return out

    monkeypatch.setattr(E2EMFD, "forward", flaky)
    cfg = _cfg(synth_small, tmp_path, "train.max_iters=20", "train.max_bad_steps=3")
    with (
        pytest.warns(UserWarning, match="non-finite"),
        pytest.raises(NonFiniteLossError, match="3 consecutive"),
    ):
        train(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r.get("skipped")] == [2, 4, 5, 6]
    assert [r["step"] for r in log if not r.get("skipped")] == [1, 3]


def test_checkpoint_refuses_unsafe_and_broken_files(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": ckpt.FORMAT, "x": Evil()}))
    with pytest.raises(ValueError, match=r"evil\.pt: not a readable e2emfd checkpoint"):
        ckpt.load_checkpoint(path)
    good = ckpt.save_checkpoint(tmp_path / "good.pt", {"step": 3, "model": {"w": torch.ones(2)}})
    assert ckpt.load_checkpoint(good)["step"] == 3
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cut\.pt: not a readable"):
        ckpt.load_checkpoint(cut)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temp file


def test_resume_with_an_incompatible_config_lists_the_keys(synth_small, tmp_path):
    train(_cfg(synth_small, tmp_path, "train.max_iters=1"), progress=False)
    cfg = _cfg(synth_small, tmp_path, "train.max_iters=2", "model.fusion.hidden=8")
    with pytest.raises(
        ValueError, match=r"different model config: model.fusion.hidden: checkpoint 16 != config 8"
    ):
        train(cfg, resume=True, progress=False)
    # inference-only settings may change between the two halves of a run
    changed = _cfg(
        synth_small,
        tmp_path,
        "train.max_iters=2",
        "model.detection.sampling_steps=4",
        "model.detection.num_proposals_test=7",
    )
    assert train(changed, resume=True, progress=False).step == 2
    model = build_model(cfg.model)
    with pytest.raises(ValueError, match=r"weights do not fit this model; .*shape"):
        ckpt.load_model_state(
            model, ckpt.load_checkpoint(tmp_path / "checkpoint_last.pt")["model"], "x.pt"
        )


def test_lr_schedules_match_hand_values():
    cfg = TrainConfig(
        lr=1.0, warmup_iters=10, warmup_factor=0.1, lr_steps=[20, 30], lr_gamma=0.5, max_iters=40
    )
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(5, cfg) == pytest.approx(0.1 * 0.5 + 0.5)
    assert [lr_factor(s, cfg) for s in (10, 19, 20, 30, 39)] == pytest.approx(
        [1, 1, 0.5, 0.25, 0.25]
    )
    cfg.schedule = "cosine"
    assert lr_factor(25, cfg) == pytest.approx(0.5)  # half-way through the decay
    assert lr_factor(40, cfg) == pytest.approx(0.0, abs=1e-12)
    cfg.schedule = "linear"
    with pytest.raises(ValueError, match="train.schedule"):
        lr_factor(0, cfg)


def test_sampler_ranks_partition_the_global_batch_and_resume_continues():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    single = take(TrainSampler(10, 4, seed=1), 12)  # 3 steps of 4
    r0 = take(TrainSampler(10, 2, seed=1, rank=0, world_size=2), 6)
    r1 = take(TrainSampler(10, 2, seed=1, rank=1, world_size=2), 6)
    for step in range(3):
        both = r0[2 * step : 2 * step + 2] + r1[2 * step : 2 * step + 2]
        assert sorted(both) == sorted(single[4 * step : 4 * step + 4])
    assert take(TrainSampler(10, 4, seed=1, start_step=2), 4) == single[8:12]
    indices = [i for i, _ in take(TrainSampler(10, 5, seed=2), 10)]
    assert sorted(indices) == list(range(10))  # one epoch = a permutation


@pytest.mark.parametrize("method", ["sum", "gmta", "upgrad"])
def test_backward_through_feature_leaves_gives_the_same_gradients(synth_small, method):
    """Backpropagating each head once and the trunk once per task (the memory-lean path)
    leaves exactly the gradients of the direct path on every parameter."""
    cfg = load_config(None, TINY_JOINT + [f"data.root={synth_small}"])
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    dataset = build_dataset(cfg.data, "train", build_transforms(cfg.data, train=False))
    batch = collate_pairs([dataset[(i, 7 + i)] for i in range(2)])
    grads = []
    for leaves in (False, True):
        model.zero_grad(set_to_none=True)
        out = model(batch, feature_leaves=leaves)
        TaskBalancer(method, model.shared_parameters()).backward(
            out["losses"], step=0, features=out.get("features")
        )
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-7, msg=name)
