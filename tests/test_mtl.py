"""Tests of e2emfd.mtl: GMTA math, TaskBalancer on a tiny two-head model, memory, DDP hooks.

References are independent of the code under test: the aligned matrix comes from an SVD of
the explicit float64 task-gradient matrix (``s_min U V^T``), task gradients from
``torch.autograd.grad``, the baselines from torchjd's aggregators applied to the ``T x P``
Jacobian.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor, nn
from torchjd import aggregation as agg

from e2emfd.mtl import (
    METHODS,
    TaskBalancer,
    aligned_condition_number,
    allreduce_mean,
    average_gradients,
    condition_number,
    gmta_transform,
    gmta_weights,
    gram_matrix,
)
from e2emfd.utils.memory import LiveBytes

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
F64 = torch.float64


# ----------------------------------------------------------------------------- references
def svd_aligned(g: Tensor) -> Tensor:
    """Aligned-MTL written from the SVD of G (T x P, full row rank): s_min * U @ Vh."""
    u, s, vh = torch.linalg.svd(g.to(F64), full_matrices=False)
    return s.min() * u @ vh


def random_g(seed: int, t: int, p: int, device: str = "cpu") -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    # Different row scales make the matrix ill-conditioned, as real task gradients are.
    scales = torch.logspace(0, 2, t, dtype=F64).unsqueeze(1)
    return (torch.randn(t, p, generator=gen, dtype=F64) * scales).to(device)


# ----------------------------------------------------------------------------- GMTA math
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("t", [2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aligned_rows_orthogonal_equal_norm(device: str, t: int, seed: int) -> None:
    g = random_g(seed, t, 40, device)
    aligned = gmta_transform(g @ g.T) @ g
    sv = torch.linalg.svdvals(aligned)
    assert (sv.max() / sv.min()).item() == pytest.approx(1.0, abs=1e-6)
    gram_a = aligned @ aligned.T
    off = gram_a - torch.diag(torch.diagonal(gram_a))
    assert off.abs().max().item() < 1e-9 * gram_a.diagonal().max().item()
    torch.testing.assert_close(aligned, svd_aligned(g), rtol=1e-9, atol=1e-9)
    assert aligned_condition_number(g @ g.T).item() == pytest.approx(1.0, abs=1e-6)
    sv_g = torch.linalg.svdvals(g)
    assert condition_number(g @ g.T).item() == pytest.approx((sv_g[0] / sv_g[-1]).item())
    assert condition_number(g @ g.T).item() > 5.0  # the row scales make G ill-conditioned


def test_float32_gram_is_eigendecomposed_in_float64() -> None:
    g = random_g(3, 2, 64)
    w32 = gmta_weights((g @ g.T).float())
    assert w32.dtype == F64
    torch.testing.assert_close(w32, gmta_weights(g @ g.T), rtol=1e-6, atol=0)


@pytest.mark.parametrize("t", [2, 3, 4])
@pytest.mark.parametrize("seed", range(4))
def test_combined_gradient_equals_torchjd_aligned_mtl(t: int, seed: int) -> None:
    g = random_g(10 + seed, t, 33)
    ours = gmta_weights(g @ g.T) @ g
    ones = agg.AlignedMTL(pref_vector=torch.ones(t, dtype=F64))(g)
    torch.testing.assert_close(ours, ones, rtol=1e-10, atol=1e-12)
    # torchjd's default preference is 1/T: the mean of the aligned rows, ours is their sum.
    torch.testing.assert_close(ours, t * agg.AlignedMTL()(g), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours, svd_aligned(g).sum(0), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
def test_scale_modes_equal_torchjd(mode: str) -> None:
    g = random_g(7, 3, 40)
    ours = gmta_weights(g @ g.T, mode) @ g
    ref = agg.AlignedMTL(pref_vector=torch.ones(3, dtype=F64), scale_mode=mode)(g)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    # only the length changes: rmse >= median >= min, same direction
    base = gmta_weights(g @ g.T) @ g
    cos = (ours @ base) / (ours.norm() * base.norm())
    assert cos.item() == pytest.approx(1.0, abs=1e-12)


def test_zero_task_gradient_gives_the_other_task() -> None:
    g = random_g(4, 2, 20)
    g[1] = 0.0
    gram = g @ g.T
    torch.testing.assert_close(gmta_weights(gram), torch.tensor([1.0, 0.0], dtype=F64))
    assert condition_number(gram).item() == float("inf")
    assert aligned_condition_number(gram).item() == pytest.approx(1.0)
    torch.testing.assert_close(
        gmta_weights(gram) @ g, agg.AlignedMTL(pref_vector=torch.ones(2, dtype=F64))(g)
    )


def test_parallel_gradients_reduce_to_plain_sum() -> None:
    g1 = random_g(5, 1, 20)[0]
    g = torch.stack([g1, -0.25 * g1])
    # Rank one: W projects on the common direction, and 1^T W G = g1 + g2 by hand.
    torch.testing.assert_close(gmta_weights(g @ g.T) @ g, g.sum(0), rtol=1e-9, atol=1e-12)


def test_all_zero_gradients() -> None:
    gram = torch.zeros(2, 2, dtype=F64)
    torch.testing.assert_close(gmta_weights(gram), torch.ones(2, dtype=F64))
    assert torch.isnan(condition_number(gram))


@pytest.mark.parametrize("device", DEVICES)
def test_gram_matrix_per_parameter_with_none(device: str) -> None:
    # Sizes chosen so that the float64 chunks (~total/8) split tensors and span several.
    gen = torch.Generator().manual_seed(0)
    shapes = [(30, 200), (7,), (1, 9000), (64, 3, 3, 3), (5,)]
    none_at = {0: {1, 3}, 1: {2}, 2: {1}}  # task -> parameters with no gradient
    grads = [
        [None if k in none_at[t] else torch.randn(sh, generator=gen).to(device)
         for k, sh in enumerate(shapes)]
        for t in range(3)
    ]  # fmt: skip
    g = torch.stack([
        torch.cat([torch.zeros(torch.Size(sh).numel(), dtype=F64) if x is None
                   else x.cpu().double().flatten() for x, sh in zip(row, shapes)])
        for row in grads
    ])  # fmt: skip
    got = gram_matrix(grads)
    assert got.dtype == F64 and got.device.type == device
    torch.testing.assert_close(got.cpu(), g @ g.T, rtol=1e-12, atol=1e-9)


# ----------------------------------------------------------------------------- tiny model
class TwoHead(nn.Module):
    """Shared conv trunk, two heads. ``only_first``/``only_last`` are listed as shared but
    reach one task only, so each task has a shared parameter whose grad stays None."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.Tanh(), nn.Conv2d(c, c, 3, padding=1), nn.Tanh()
        )
        self.only_first = nn.Parameter(torch.linspace(0.5, 1.5, c))
        self.only_last = nn.Parameter(torch.linspace(-0.2, 0.3, c))
        self.head_fus = nn.Conv2d(c, 1, 1)
        self.head_det = nn.Conv2d(c, 3, 1)

    def shared(self) -> list[nn.Parameter]:
        return [*self.trunk.parameters(), self.only_first, self.only_last]

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        f = self.trunk(x)
        fus = self.head_fus(f * self.only_first.view(1, -1, 1, 1))
        det = self.head_det(f + self.only_last.view(1, -1, 1, 1))
        return {
            "fus": (fus - x.mean(1, keepdim=True)).square().mean(),
            "det": (det.tanh() - 0.3).abs().mean() + 0.1 * det.mean(),
        }


def make_model(device: str, seed: int = 0, dtype: torch.dtype = F64) -> tuple[TwoHead, Tensor]:
    torch.manual_seed(seed)
    model = TwoHead().to(device=device, dtype=dtype)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed + 100))
    return model, x.to(device=device, dtype=dtype)


def task_grads(model: TwoHead, x: Tensor, params: list[nn.Parameter]) -> dict[str, list[Tensor]]:
    """Per-task gradients via torch.autograd.grad (zeros where a task does not reach)."""
    out = {}
    for name, loss in model.losses(x).items():
        gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        out[name] = [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]
    return out


def shared_indices(model: nn.Module, shared: list[nn.Parameter]) -> list[int]:
    """Positions of ``shared`` (in its order) within ``model.parameters()``."""
    ids = [id(p) for p in model.parameters()]
    return [ids.index(id(p)) for p in shared]


def flat(grads: list[Tensor]) -> Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def unflat(vec: Tensor, like: list[nn.Parameter]) -> list[Tensor]:
    return [c.view_as(p) for c, p in zip(vec.split([p.numel() for p in like]), like)]


def run_balancer(model: TwoHead, x: Tensor, balancer: TaskBalancer, step: int = 0) -> dict:
    model.zero_grad(set_to_none=True)
    return balancer.backward(model.losses(x), step)


def assert_heads_own_grads(model: TwoHead, ref: dict[str, list[Tensor]]) -> None:
    """Head parameters hold their own task's gradient (``ref`` follows model.parameters())."""
    for i, (name, p) in enumerate(model.named_parameters()):
        for task in ("fus", "det"):
            if name.startswith(f"head_{task}."):
                torch.testing.assert_close(p.grad, ref[task][i], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_gmta_balancer_matches_independent_formula(device: str) -> None:
    model, x = make_model(device)
    shared = model.shared()
    ref = task_grads(model, x, list(model.parameters()))
    idx = shared_indices(model, shared)
    g = torch.stack([flat([ref[n][i] for i in idx]) for n in ("fus", "det")])
    expected = unflat(svd_aligned(g).sum(0), shared)

    stats = run_balancer(model, x, TaskBalancer("gmta", shared))
    for p, e, i in zip(shared, expected, idx):
        torch.testing.assert_close(p.grad, e, rtol=1e-9, atol=1e-12)
        # The public code left the plain sum in place; here every shared grad changes.
        assert not torch.allclose(p.grad, ref["fus"][i] + ref["det"][i], rtol=1e-3, atol=0)
    assert_heads_own_grads(model, ref)

    cos = torch.nn.functional.cosine_similarity(g[0], g[1], dim=0).item()
    sv = torch.linalg.svdvals(g)
    assert stats["cos"] == pytest.approx(cos, rel=1e-9)
    assert stats["norm_ratio"] == pytest.approx((g[0].norm() / g[1].norm()).item(), rel=1e-9)
    assert stats["cond_before"] == pytest.approx((sv[0] / sv[1]).item(), rel=1e-9)
    assert stats["cond_after"] == pytest.approx(1.0, abs=1e-6)
    w = torch.linalg.lstsq(g.T, flat([p.grad for p in shared]).unsqueeze(1)).solution
    assert [stats["w_fus"], stats["w_det"]] == pytest.approx(w.squeeze(1).tolist(), rel=1e-8)
    assert all(isinstance(v, float) for v in stats.values())


def torchjd_aggregator(method: str) -> agg.Aggregator:
    return {
        "pcgrad": lambda: agg.PCGrad(),
        "cagrad": lambda: agg.CAGrad(c=0.4),
        "nashmtl": lambda: agg.NashMTL(n_tasks=2),
        "imtl": lambda: agg.IMTLG(),
        "mgda": lambda: agg.MGDA(),
        "upgrad": lambda: agg.UPGrad(),
    }[method]()


@pytest.mark.parametrize("method", ["pcgrad", "cagrad", "nashmtl", "imtl", "mgda", "upgrad"])
def test_torchjd_methods_match_aggregator_on_jacobian(method: str) -> None:
    model, x = make_model("cpu", seed=1)
    shared = model.shared()
    ref = task_grads(model, x, list(model.parameters()))
    idx = shared_indices(model, shared)
    jac = torch.stack([flat([ref[n][i] for i in idx]) for n in ("fus", "det")])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*DPP.*")
        expected = unflat(torchjd_aggregator(method)(jac), shared)

    balancer = TaskBalancer(method, shared)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = run_balancer(model, x, balancer)
        stats2 = run_balancer(model, x, balancer, step=1)  # a second call (Nash-MTL state)
    assert not [w for w in caught if "DPP" in str(w.message)]
    for p, e in zip(shared, expected):
        assert torch.isfinite(p.grad).all()
        if method != "nashmtl":  # Nash-MTL's second call starts from its first solution
            torch.testing.assert_close(p.grad, e, rtol=1e-6, atol=1e-10)
    assert_heads_own_grads(model, ref)
    assert {"cos", "norm_ratio", "cond_before", "w_fus", "w_det"} <= set(stats2)
    assert "cond_after" not in stats


def test_nashmtl_first_call_matches_aggregator() -> None:
    model, x = make_model("cpu", seed=2)
    shared = model.shared()
    ref = task_grads(model, x, shared)
    jac = torch.stack([flat(ref["fus"]), flat(ref["det"])])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*DPP.*")
        expected = unflat(agg.NashMTL(n_tasks=2)(jac), shared)
        run_balancer(model, x, TaskBalancer("nashmtl", shared))
    for p, e in zip(shared, expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_float32_finite(method: str) -> None:
    model, x = make_model(DEVICES[-1], seed=3, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*DPP.*")
        run_balancer(model, x, TaskBalancer(method, model.shared()))
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_every_balances_only_on_multiples() -> None:
    model, x = make_model("cpu", seed=4)
    balancer = TaskBalancer("gmta", model.shared(), every=3)
    ref = task_grads(model, x, list(model.parameters()))
    balanced = []
    for step in range(8):
        stats = run_balancer(model, x, balancer, step)
        assert balancer.balances(step) == bool(stats)
        if stats:
            balanced.append(step)
        else:  # plain step: every parameter holds the plain sum
            for p, a, b in zip(model.parameters(), ref["fus"], ref["det"]):
                torch.testing.assert_close(p.grad, a + b, rtol=1e-10, atol=1e-12)
    assert balanced == [0, 3, 6]
    assert run_balancer(model, x, TaskBalancer("sum", model.shared())) == {}


def test_reduce_fn_sees_raw_task_grads_and_its_change_is_used() -> None:
    model, x = make_model("cpu", seed=5)
    shared = model.shared()
    ref = task_grads(model, x, shared)
    calls: list[list[Tensor]] = []

    def fake_reduce(tensors: list[Tensor]) -> None:
        calls.append([t.clone() for t in tensors])
        for t in tensors[: len(shared)]:  # pretend the other rank's fusion grads were 3x
            t.mul_(2.0)

    balancer = TaskBalancer("gmta", shared, every=2, reduce_fn=fake_reduce)
    run_balancer(model, x, balancer, step=1)
    assert calls == []  # plain step: DDP syncs, no reduce_fn
    run_balancer(model, x, balancer, step=0)
    assert len(calls) == 1 and len(calls[0]) == 2 * len(shared)
    # Before alignment: the raw per-task grads, None materialised as zeros, in task order.
    for got, want in zip(calls[0], ref["fus"] + ref["det"]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    g = torch.stack([2.0 * flat(ref["fus"]), flat(ref["det"])])
    for p, e in zip(shared, unflat(svd_aligned(g).sum(0), shared)):
        torch.testing.assert_close(p.grad, e, rtol=1e-9, atol=1e-12)


def test_task_without_shared_gradient() -> None:
    model, x = make_model("cpu", seed=6)
    shared = list(model.trunk.parameters())
    losses = model.losses(x)
    f_free = model.head_det(model.trunk(x).detach())  # det reaches its head only
    ref_fus = torch.autograd.grad(losses["fus"], shared, retain_graph=True)
    model.zero_grad(set_to_none=True)
    stats = TaskBalancer("gmta", shared).backward(
        {"fus": losses["fus"], "det": f_free.square().mean(), "const": torch.tensor(2.0)}, 0
    )
    for p, g in zip(shared, ref_fus):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
    assert stats["w_fus"] == pytest.approx(1.0)
    assert stats["w_det"] == pytest.approx(0.0, abs=1e-12)
    assert stats["w_const"] == pytest.approx(0.0, abs=1e-12)
    assert stats["cond_before"] == float("inf") and stats["cond_after"] == pytest.approx(1.0)
    assert model.head_det.weight.grad is not None


def test_average_gradients_materialises_and_reduces() -> None:
    model, x = make_model("cpu", seed=7)
    heads = [*model.head_fus.parameters(), *model.head_det.parameters()]
    model.zero_grad(set_to_none=True)
    model.losses(x)["fus"].backward()
    seen: list[Tensor] = []

    def fake_reduce(tensors: list[Tensor]) -> None:
        seen.extend(tensors)
        for t in tensors:
            t.add_(1.0)

    average_gradients(heads, fake_reduce)
    assert len(seen) == len(heads) and all(s is p.grad for s, p in zip(seen, heads))
    torch.testing.assert_close(model.head_det.weight.grad, torch.ones_like(model.head_det.weight))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        TaskBalancer("famo", [])
    with pytest.raises(ValueError):
        TaskBalancer("gmta", [], every=0)


# ----------------------------------------------------------------------------- memory
def _measure(step_fn: Callable[[list[nn.Parameter], dict[str, Tensor]], None]) -> tuple[int, int]:
    """(peak, still live) bytes of one forward + backward of a parameter-heavy model."""
    torch.manual_seed(0)
    trunk = nn.Sequential(*[nn.Conv2d(32, 32, 3, padding=1) for _ in range(6)])
    head_a, head_b = nn.Conv2d(32, 1, 1), nn.Conv2d(32, 2, 1)
    x = torch.randn(1, 32, 4, 4)
    with LiveBytes() as mem:
        f = trunk(x)
        losses = {"a": head_a(f).square().mean(), "b": head_b(f).abs().mean()}
        step_fn(list(trunk.parameters()), losses)
        del f, losses
    return mem.peak, mem.current


def test_memory_budget_of_a_balancing_step() -> None:
    shared_bytes = 6 * (32 * 32 * 9 + 32) * 4
    plain_peak, plain_live = _measure(lambda sh, ls: sum(ls.values()).backward())
    gmta_peak, gmta_live = _measure(lambda sh, ls: TaskBalancer("gmta", sh).backward(ls, 0))
    assert gmta_live == plain_live  # nothing kept beyond the .grad tensors
    assert gmta_peak - plain_peak <= 3 * shared_bytes
    assert gmta_peak - plain_peak >= shared_bytes  # the one stashed copy is really counted

    def naive(shared: list[nn.Parameter], losses: dict[str, Tensor]) -> None:
        # Jacobian-style: per-task autograd.grad copies + a concatenated 2 x P matrix.
        rows = [torch.cat([g.flatten() for g in torch.autograd.grad(v, shared, retain_graph=True)])
                for v in losses.values()]  # fmt: skip
        jac = torch.stack(rows)
        sum(losses.values()).backward()
        del jac

    naive_peak, _ = _measure(naive)
    assert naive_peak - plain_peak > 3 * shared_bytes  # the tracker does catch a wasteful one


# ----------------------------------------------------------------------------- distributed
def _allreduce_worker(rank: int, init_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        big = torch.full((70,), float(rank))  # over the bucket size: reduced on its own
        small = [torch.full((3,), 10.0 * rank), torch.full((2, 2), rank + 1.0).t()]
        allreduce_mean(bucket_bytes=64)([small[0], big, small[1]])
        assert torch.equal(big, torch.full((70,), 0.5))
        assert torch.equal(small[0], torch.full((3,), 5.0))
        assert torch.equal(small[1], torch.full((2, 2), 1.5))
    finally:
        dist.destroy_process_group()


def test_allreduce_mean_two_processes() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_allreduce_worker, args=(os.path.join(tmp, "init"),), nprocs=2, join=True)
