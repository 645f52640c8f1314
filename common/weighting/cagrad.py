"""Conflict-averse gradient descent (CAGrad), Liu et al. 2021."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import GradientWeighting, register_weighting

__all__ = ["CAGrad", "project_simplex", "solve_cagrad_weights"]


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of the vector ``v`` onto the probability simplex (sort-based algorithm)."""
    n = v.numel()
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0) - 1.0
    k = torch.arange(1, n + 1, dtype=v.dtype, device=v.device)
    rho = int(torch.nonzero(u - css / k > 0).max())
    theta = css[rho] / (rho + 1)
    return (v - theta).clamp_min(0.0)


def _objective(w: torch.Tensor, ab: torch.Tensor, a: torch.Tensor, coef: float) -> float:
    return float(w @ ab + coef * torch.sqrt((w @ a @ w).clamp_min(0.0)))


def _solve_by_supports(a: torch.Tensor, ab: torch.Tensor, coef: float, tol: float) -> torch.Tensor | None:
    """Exact minimiser from the KKT conditions, trying every support ``S`` of ``w`` (small ``T`` only).

    On a support with invertible ``A_S`` and ``||g_w|| > 0``, stationarity ``q + coef A w / ||g_w|| + mu 1 = 0``
    (``q = A b``) and ``sum w = 1`` give ``w_S = -M (q_S + mu 1) / sqrt(disc)`` with ``M = A_S^-1`` and ``mu``
    the root of ``(q_S + mu 1)^T M (q_S + mu 1) = coef^2`` for which ``||g_w|| = coef / sqrt(disc) > 0``.
    Returns the feasible candidate satisfying the KKT conditions off the support (hence the global minimiser,
    ``F`` being convex), or ``None`` when no candidate does (e.g. linearly dependent gradients).
    """
    n = a.shape[0]
    best, best_f = None, float("inf")
    for mask in range(1, 2**n):
        s = [i for i in range(n) if mask >> i & 1]
        a_s = a[s][:, s]
        if float(torch.linalg.cond(a_s)) > 1e12:
            continue
        m = torch.linalg.inv(a_s)
        q = ab[s]
        alpha, beta, gamma = float(m.sum()), float((m @ q).sum()), float(q @ m @ q)
        disc = beta * beta - alpha * (gamma - coef * coef)
        if not disc > 0 or not alpha > 0:
            continue
        mu = (-beta - disc**0.5) / alpha
        w_s = -(m @ (q + mu)) / disc**0.5
        if float(w_s.min()) < -tol:
            continue
        w = torch.zeros(n, dtype=a.dtype)
        w[s] = w_s.clamp_min(0.0)
        w = w / w.sum()
        norm = float(torch.sqrt((w @ a @ w).clamp_min(0.0)))
        if norm <= 0:
            continue
        nu = ab + coef * (a @ w) / norm + mu  # multipliers of w >= 0; must be >= 0 off the support
        if float(nu.min()) < -tol * (1.0 + abs(mu)):
            continue
        f = _objective(w, ab, a, coef)
        if f < best_f:
            best, best_f = w, f
    return best


def _solve_by_pgd(a: torch.Tensor, ab: torch.Tensor, coef: float, max_iter: int, tol: float) -> torch.Tensor:
    """Projected gradient descent with Armijo backtracking from ``b = 1/T`` (``||g_w||`` smoothed by 1e-12)."""
    n = a.shape[0]
    eps = 1e-12

    def objective(w: torch.Tensor) -> float:
        return float(w @ ab + coef * torch.sqrt((w @ a @ w).clamp_min(0.0) + eps))

    w = torch.full((n,), 1.0 / n, dtype=a.dtype)
    f, step = objective(w), 1.0
    for _ in range(max_iter):
        grad = ab + coef * (a @ w) / torch.sqrt((w @ a @ w).clamp_min(0.0) + eps)
        while True:
            w_new = project_simplex(w - step * grad)
            diff = w_new - w
            f_new = objective(w_new)
            if f_new <= f + float(grad @ diff) + float(diff @ diff) / (2 * step) + 1e-15 or step < 1e-12:
                break
            step *= 0.5
        if float(diff.norm()) < tol:
            return w_new
        w, f, step = w_new, f_new, step * 2.0
    return w


def solve_cagrad_weights(gram: torch.Tensor, c: float, max_iter: int = 500, max_exact_tasks: int = 8) -> torch.Tensor:
    """Minimise ``F(w) = g_w . g0 + c ||g0|| ||g_w||`` over the simplex, given the Gram matrix ``G G^T``.

    With ``A = G G^T`` and ``b = 1/T``: ``g_w . g0 = w^T A b``, ``||g0|| = sqrt(b^T A b)`` and
    ``||g_w|| = sqrt(w^T A w)``; ``F`` is convex. ``A`` is first divided by its mean diagonal (``F`` scales
    linearly with ``A``, the minimiser does not change). For ``T <= max_exact_tasks`` the KKT conditions are
    solved exactly on every support of ``w``; when that fails (linearly dependent gradients, ``T`` larger)
    projected gradient descent (``max_iter`` steps, float64) is used instead.
    """
    a = gram.detach().to(dtype=torch.float64, device="cpu")
    n = a.shape[0]
    b = torch.full((n,), 1.0 / n, dtype=torch.float64)
    scale = float(torch.diagonal(a).mean())
    if n == 1 or not scale > 0:
        return b
    a = a / scale
    ab = a @ b
    coef = c * float((b @ ab).clamp_min(0.0).sqrt())
    if coef <= 0:  # linear objective: a vertex minimises it
        return torch.nn.functional.one_hot(torch.argmin(ab), n).to(torch.float64)
    if n <= max_exact_tasks:
        w = _solve_by_supports(a, ab, coef, tol=1e-9)
        if w is not None:
            return w
    return _solve_by_pgd(a, ab, coef, max_iter, tol=1e-10)


@register_weighting("cagrad")
class CAGrad(GradientWeighting):
    """Conflict-averse update of the shared parameters.

    Liu, Liu, Jin, Stone and Liu, "Conflict-averse gradient descent for multi-task learning", NeurIPS 2021,
    as in LibMTL. With task gradients ``g_i`` of the shared parameters and ``g0 = mean_i g_i``, the update
    ``d`` maximises the worst task improvement ``min_i g_i . d`` in the ball ``||d - g0|| <= c ||g0||``.
    Its dual gives, with ``sqrt(phi) = c ||g0||``::

        w* = argmin_{w in simplex} g_w . g0 + sqrt(phi) ||g_w||,     g_w = sum_i w_i g_i
        d  = g0 + sqrt(phi) / ||g_w*|| * g_w*

    The simplex problem is solved in torch (no SciPy) by :func:`solve_cagrad_weights`: exactly from the KKT
    conditions on each support for up to 8 tasks, projected gradient descent otherwise. The shared gradient is
    ``d / (1 + c^2)`` (``rescale=1``, LibMTL's default), ``d / (1 + c)``
    (``rescale=2``) or ``d`` (``rescale=0``). ``c = 0`` gives the mean gradient ``g0`` (note: the *mean*, so
    1/T of EW's shared gradient). Task-specific parameters get their own task's gradient. The returned weight
    of task i is its coefficient in the shared gradient, ``(1/T + sqrt(phi) w_i / ||g_w||) / rescale``.

    Args:
        task_names: names of all tasks the method may see, in a fixed order.
        c: radius of the ball around ``g0``, relative to ``||g0||``, >= 0 (default 0.4, the paper's NYUv2
            setting; LibMTL's command-line default is 0.5).
        rescale: 0, 1 or 2, see above.
        max_iter: iteration cap of the projected-gradient fallback of the simplex solver, > 0.
    """

    def __init__(self, task_names: Sequence[str], c: float = 0.4, rescale: int = 1, max_iter: int = 500) -> None:
        super().__init__(task_names)
        if not c >= 0:
            raise ValueError(f"c must be >= 0, got {c}.")
        if rescale not in (0, 1, 2):
            raise ValueError(f"rescale must be 0, 1 or 2, got {rescale}.")
        if int(max_iter) < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}.")
        self.c = float(c)
        self.rescale = int(rescale)
        self.max_iter = int(max_iter)

    def combine(self, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the un-rescaled CAGrad direction ``d`` and each task's coefficient in it, for ``(T, P)`` grads."""
        n = grads.shape[0]
        g64 = grads.detach().double()
        gram = g64 @ g64.T
        w = solve_cagrad_weights(gram, self.c, self.max_iter).to(g64.device)
        g0 = g64.mean(0)
        gw = w @ g64
        sqrt_phi = self.c * g0.norm()
        lmbda = sqrt_phi / (gw.norm() + 1e-12) if self.c > 0 else torch.zeros((), dtype=torch.float64)
        coeffs = torch.full_like(w, 1.0 / n) + lmbda * w
        return (coeffs @ g64).to(grads.dtype), coeffs

    def backward(self, losses: dict[str, torch.Tensor], shared_params: Sequence[nn.Parameter]) -> dict[str, float]:
        """Backward each task, write the (rescaled) CAGrad direction into the shared gradients."""
        self.check_losses(losses)
        names, grads = self.task_gradients(losses, shared_params)
        d, coeffs = self.combine(grads)
        factor = {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]
        self.set_shared_gradient(d / factor, shared_params)
        return {k: float(coeffs[j]) / factor for j, k in enumerate(names)}
