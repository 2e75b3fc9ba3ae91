"""GMTA (Gradient Matrix Task Alignment) = Aligned-MTL on the Gram matrix of task gradients.

Notation (E2E-MFD's GMTA, after Aligned-MTL, Senushkin et al. CVPR 2023): ``G`` is the
``T x P`` matrix whose row ``i`` is task ``i``'s gradient on the shared parameters
(flattened). Everything here works on the ``T x T`` Gram matrix ``G G^T`` only, so nobody
ever needs to materialise ``G``:

- eigendecompose ``G G^T = V diag(l) V^T`` (in float64);
- keep the eigenvalues ``l > l_max * T * eps`` (``T = 2`` gives the paper's ``2 * eps``; the
  rest are numerical noise of a rank-deficient ``G``);
- ``W = sqrt(l_min) V diag(l^-1/2) V^T`` over the kept eigenpairs, with ``l_min`` the smallest
  KEPT eigenvalue. The aligned matrix ``W G`` equals ``s_min U V_G^T`` for the thin SVD
  ``G = U diag(s) V_G^T``: its rows are orthogonal with equal norm ``s_min``;
- the shared update is the sum of the aligned rows, ``1^T W G = w^T G`` with ``w = W 1``
  (``W`` is symmetric), i.e. per-task weights ``w``.

Relation to torchjd 0.18: ``torchjd.aggregation.AlignedMTL(pref_vector=ones(T))(G)`` equals
``w^T G`` exactly; the default ``AlignedMTL()`` uses the preference ``1/T`` and so returns
``w^T G / T``. E2E-MFD sums the aligned rows, hence no ``1/T`` here.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "aligned_condition_number",
    "condition_number",
    "gmta_transform",
    "gmta_weights",
    "psd_sqrt",
]


def _eigh64(gram: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Eigenpairs of a symmetric ``[T, T]`` matrix in float64, descending, plus the keep mask.

    Returns ``(l, V, keep)``: ``l`` ``[T]`` (negative rounding noise clamped to 0), ``V``
    ``[T, T]`` with eigenvectors as columns, ``keep`` ``[T]`` bool (``l > l_max * T * eps``).
    """
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be a square matrix, got shape {tuple(gram.shape)}")
    g = gram.to(torch.float64)
    # Symmetrise: a Gram accumulated in pieces can be off by rounding in its two triangles.
    g = 0.5 * (g + g.T)
    lam, vec = torch.linalg.eigh(g)
    lam, vec = lam.flip(0), vec.flip(1)
    lam = lam.clamp_min(0.0)
    tol = lam[0] * g.shape[0] * torch.finfo(torch.float64).eps
    keep = lam > tol
    return lam, vec, keep


SCALE_MODES = ("min", "median", "rmse")


def gmta_transform(gram: Tensor, scale_mode: str = "min") -> Tensor:
    """The GMTA balance matrix ``W`` such that ``W G`` is the aligned gradient matrix.

    Args:
        gram: ``[T, T]`` Gram matrix ``G G^T`` of the task gradients (any float dtype/device).
        scale_mode: the common norm of the aligned rows: ``min`` = ``sqrt(l_min)`` (the
            paper's), ``median`` = sqrt of the median kept eigenvalue (the
            lower middle one, as ``torch.median``; equal to ``min`` for two tasks), ``rmse``
            = sqrt of the mean kept eigenvalue (the original Aligned-MTL code's). The
            direction of the update is the same in every mode; only its length differs,
            which matters when aligned steps are mixed with plain ones under Adam.

    Returns:
        ``[T, T]`` float64 symmetric ``W = sqrt(l_min) V diag(l^-1/2) V^T`` over the kept
        eigenpairs. If ``G`` is zero, ``W`` is the identity (plain sum of the zero rows).
    """
    lam, vec, keep = _eigh64(gram)
    if not bool(keep.any()):
        return torch.eye(gram.shape[0], dtype=torch.float64, device=gram.device)
    lam_k, vec_k = lam[keep], vec[:, keep]
    if scale_mode == "min":
        scale = lam_k[-1]  # the smallest kept eigenvalue (descending order)
    elif scale_mode == "median":
        scale = lam_k.median()
    elif scale_mode == "rmse":
        scale = lam_k.mean()
    else:
        raise ValueError(f"scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}")
    return scale.sqrt() * (vec_k * lam_k.rsqrt()) @ vec_k.T


def gmta_weights(gram: Tensor, scale_mode: str = "min") -> Tensor:
    """Per-task weights ``w`` with ``w^T G = 1^T W G`` (the sum of the aligned rows).

    Args:
        gram: ``[T, T]`` Gram matrix ``G G^T``.

    Returns:
        ``[T]`` float64 weights, on ``gram``'s device. A task whose gradient is zero (or lies
        in the dropped null space) gets weight 0 when another task has a non-zero gradient.
    """
    return gmta_transform(gram, scale_mode).sum(dim=1)


def condition_number(gram: Tensor) -> Tensor:
    """Condition number ``sqrt(l_max / l_min)`` of ``G`` (= ``s_max / s_min``) from its Gram.

    Args:
        gram: ``[T, T]`` Gram matrix ``G G^T``.

    Returns:
        0-dim float64: ``inf`` when ``G`` is rank deficient (``l_min`` dropped as noise), ``nan``
        when ``G`` is zero.
    """
    lam, _, keep = _eigh64(gram)
    if not bool(keep.any()):
        return torch.tensor(float("nan"), dtype=torch.float64, device=gram.device)
    if not bool(keep.all()):
        return torch.tensor(float("inf"), dtype=torch.float64, device=gram.device)
    return (lam[0] / lam[-1]).sqrt()


def aligned_condition_number(gram: Tensor) -> Tensor:
    """Condition number of the aligned matrix ``W G`` on the span GMTA keeps (ideally 1).

    Computed from the Gram of the aligned rows ``W (G G^T) W`` (not assumed), using its
    eigenvalues on the kept eigenvectors of ``G G^T``, so a dropped null direction of a
    rank-deficient ``G`` does not count as an infinite condition number.

    Args:
        gram: ``[T, T]`` Gram matrix ``G G^T``.

    Returns:
        0-dim float64; ``nan`` when ``G`` is zero.
    """
    lam, vec, keep = _eigh64(gram)
    if not bool(keep.any()):
        return torch.tensor(float("nan"), dtype=torch.float64, device=gram.device)
    w = gmta_transform(gram)
    g = gram.to(torch.float64)
    aligned_gram = w @ (0.5 * (g + g.T)) @ w
    vec_k = vec[:, keep]
    # Restricted to the kept span the aligned Gram is symmetric PD; its eigenvalues are l_min.
    lam_a = torch.linalg.eigvalsh(vec_k.T @ aligned_gram @ vec_k)
    return (lam_a[-1] / lam_a[0]).sqrt()


def psd_sqrt(gram: Tensor) -> Tensor:
    """A ``[T, T]`` float64 matrix ``R`` with ``R R^T = gram`` (symmetric PSD square root).

    Lets a weighting that only looks at ``J J^T`` (e.g. torchjd's Nash-MTL, which takes the
    Jacobian) run on a ``T x T`` stand-in instead of the ``T x P`` Jacobian.
    """
    lam, vec, _ = _eigh64(gram)
    return (vec * lam.sqrt()) @ vec.T
