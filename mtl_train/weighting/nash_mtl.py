"""Nash-MTL: Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
Bargaining Game", ICML 2022.

The shared update is d = sum_i alpha_i g_i with alpha in R_+^k the Nash bargaining solution

    (G G^T) alpha = 1 / alpha        (element-wise reciprocal),

i.e. every task's directional derivative alpha_i (G d)_i equals 1. Since alpha^T M alpha = sum_i alpha_i (M alpha)_i
= k, the direction always has norm sqrt(k), whatever the scale of the gradients (G -> cG gives alpha -> alpha / c and
the same d).

Solver. The repository solves the equation with 20 CCCP iterations of a cvxpy/ECOS program. Here we minimise
the strictly convex f(alpha) = 1/2 alpha^T M alpha - sum_i log alpha_i, whose stationarity condition is exactly
M alpha = 1/alpha, by Newton's method in torch on the gradients' device (:func:`nash_mtl_weights`): Hessian
M + diag(1/alpha^2), a fixed number of iterations (default 20; on a GPU no data-dependent host synchronisation),
each step the best of a geometric grid of step lengths capped by a fraction-to-boundary rule (alpha stays > 0),
so f never increases. On the CPU, where reading a number costs no device synchronisation, the loop also stops after the
step at which half the squared Newton decrement lambda^2 / 2 (about f(alpha) - min f) falls to ``tolerance``
(default 1e-12): warm-started from the previous step's solution that is 2-3 iterations instead of 20, with alpha
within 1e-7 (relative) of the 20-iteration solution. The start is the better (lower f) of the previous solution
and the orthogonal-gradient solution, each rescaled optimally along its ray.

Scaling. The equation is invariant under rescaling the rows of G: G -> D G (D diagonal, positive) gives alpha ->
D^{-1} alpha. The solver therefore works on the unit gradients u_i = g_i / ||g_i||: with K = U U^T (the cosine
matrix, unit diagonal) it solves K a = 1/a and returns alpha_i = a_i / ||g_i||, whatever the spread of the gradient
norms. (Dividing M by ||M||_F, as the repository does, fixes only the overall scale: a ridge eps * I added after
that is as large as the Gramian entry of a task whose gradient is 1e4 times smaller than the largest, and shrinks
that task's weight.) A task whose gradient is exactly zero (switched off by the training schedule) gets weight 0
(its stored alpha, reused between updates, keeps its value), and the others solve their own equation (then ||d|| =
sqrt(number of nonzero gradients)). ``eps`` (default 1e-10) adds a ridge eps * I to K. When the gradients are
linearly dependent (M singular, e.g. two identical tasks) the equation has no solution, and float32 rounding can
leave K slightly indefinite: then the smallest ridge of 1e-8, 1e-6, ..., 1 that keeps K + ridge/2 I positive
definite is used instead (chosen by a batched Cholesky test, no host read), so alpha stays finite and positive, and
||d|| <= sqrt(k) still holds. Accuracy (float64, 20 iterations, 1000 random problems with k <= 11, gradient norms
spread over up to 1e4): |alpha_i (M alpha)_i - 1| <= 5e-8 for every task when M has full rank.

Defaults follow the repository (and LibMTL): ``update_weights_every = 1`` (on other steps alpha is reused and
only one backward of sum_i alpha_i L_i reaches the shared part, which is where the method saves compute),
``max_norm = 1.0``: the repository clips the norm of the shared parameters' gradient after the backward; here that
is a clip of the direction d to norm <= max_norm (torch's clip rule, factor max_norm / (||d|| + 1e-6) when below 1;
in ``mode="rep"`` it clips the gradient w.r.t. z). As ||d|| = sqrt(k) > 1, the default clip is active on every step.
The reported weights are the effective ones, clip included (d = weights @ G). Task-specific parameters receive the
gradients of their own unweighted losses (the repository weights them by alpha_i).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, active_tasks
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting, unscale

_LINE_SEARCH_STEPS = 16  # step lengths t_max * 2^-j, j = 0..15, plus the damped step and 0
_FRACTION_TO_BOUNDARY = 0.99
_FALLBACK_RIDGES = (1e-8, 1e-6, 1e-4, 1e-2, 1.0)  # tried in turn where eps leaves K not positive definite


def _barrier_objective(alpha: Tensor, gram: Tensor) -> Tensor:
    """f(alpha) = 1/2 alpha^T M alpha - sum log alpha, for alpha of shape (..., k); +inf where some alpha_i <= 0."""
    value = 0.5 * ((alpha @ gram) * alpha).sum(-1) - torch.log(alpha.clamp_min(1e-300)).sum(-1)
    return torch.where((alpha > 0).all(-1), value, torch.full_like(value, float("inf")))


def _rescale_along_ray(alpha: Tensor, gram: Tensor) -> Tensor:
    """The minimiser of f over c * alpha (c > 0): c = sqrt(k / alpha^T M alpha)."""
    quadratic = ((alpha @ gram) * alpha).sum(-1, keepdim=True)
    return alpha * torch.sqrt(alpha.shape[-1] / quadratic.clamp_min(1e-300))


def solve_nash_equation(gram: Tensor, init: Tensor, iterations: int = 20, tolerance: float = 0.0) -> Tensor:
    """alpha > 0 with ``gram @ alpha = 1 / alpha`` for a symmetric positive-definite ``gram`` (k, k), by Newton's
    method on f(alpha) = 1/2 alpha^T M alpha - sum log alpha started at ``init`` (> 0), ``iterations`` steps, each
    the best point of a batched line search. Works in the dtype of ``gram``. With ``tolerance = 0`` there is no host
    synchronisation; with ``tolerance > 0`` the loop stops after the step whose Newton decrement has
    lambda^2 / 2 <= tolerance, which reads one number per iteration on the host (free on the CPU only)."""
    halvings = 0.5 ** torch.arange(_LINE_SEARCH_STEPS, dtype=gram.dtype, device=gram.device)
    alpha = init
    for _ in range(iterations):
        gradient = gram @ alpha - 1.0 / alpha
        hessian = gram + torch.diag(1.0 / alpha**2)
        factor, _ = torch.linalg.cholesky_ex(hessian)
        step = -torch.cholesky_solve(gradient.unsqueeze(-1), factor).squeeze(-1)
        decrement = torch.sqrt((-(gradient * step).sum()).clamp_min(0.0))  # Newton decrement lambda
        ratios = torch.where(step < 0, -alpha / step.clamp(max=-1e-300), torch.full_like(alpha, float("inf")))
        t_max = (_FRACTION_TO_BOUNDARY * ratios.min()).clamp(max=1.0)
        lengths = torch.cat([t_max * halvings, torch.minimum(t_max, 1.0 / (1.0 + decrement)).view(1),
                             torch.zeros(1, dtype=gram.dtype, device=gram.device)])
        candidates = alpha + lengths.unsqueeze(-1) * step
        best = torch.argmin(_barrier_objective(candidates, gram))
        alpha = torch.index_select(candidates, 0, best.view(1)).squeeze(0)
        if tolerance > 0 and float(decrement) ** 2 / 2 <= tolerance:
            break
    return alpha


def _ridge(cosines: Tensor, eps: float) -> Tensor:
    """The smallest of ``eps`` and the fallbacks ``_FALLBACK_RIDGES`` (none below ``eps``) whose half keeps
    ``cosines`` + ridge/2 I positive definite (a batched Cholesky test, no host read): ``eps`` for a full-rank Gramian,
    more where the unit gradients are linearly dependent and rounding left the Gramian slightly indefinite."""
    ridges = torch.tensor([eps, *_FALLBACK_RIDGES], dtype=cosines.dtype, device=cosines.device).clamp_min(eps)
    eye = torch.eye(cosines.shape[0], dtype=cosines.dtype, device=cosines.device)
    _, info = torch.linalg.cholesky_ex(cosines + 0.5 * ridges.view(-1, 1, 1) * eye)
    first = torch.argmax((info == 0).to(torch.int8))  # the first success (index 0 if, impossibly, none succeeds)
    return torch.index_select(ridges, 0, first.view(1)).squeeze(0)


def nash_mtl_weights(gram: Tensor, init: Tensor | None = None, iterations: int = 20, eps: float = 1e-10,
                     tolerance: float = 0.0) -> tuple[Tensor, Tensor]:
    """The Nash-MTL weights for the Gramian ``gram = G G^T`` (k, k): ``(alpha, unit_alpha)``.

    ``alpha`` solves ``M alpha = 1/alpha`` (M = ``gram``, true units: d = alpha @ G) on the tasks whose gradient is
    nonzero, and is 0 for the others. It is solved per task scale: ``unit_alpha`` solves ``(K + eps I) unit_alpha =
    1/unit_alpha`` for the Gramian K of the unit gradients g_i / ||g_i|| (identity rows for zero gradients; a larger
    ridge where K + eps I is not positive definite, see the module docstring), and
    ``alpha_i = unit_alpha_i / ||g_i||``. ``unit_alpha`` does not depend on the gradients' scales, so it is the warm
    start to pass back as ``init`` on the next call. Solved in float64 on ``gram``'s device; returns ``gram``'s
    dtype. ``tolerance`` is :func:`solve_nash_equation`'s early stop (0: always ``iterations`` steps, no host
    read)."""
    k = gram.shape[0]
    matrix = gram.detach().to(torch.float64)
    matrix = 0.5 * (matrix + matrix.T)
    norms = matrix.diagonal().clamp_min(0).sqrt()
    active = norms > 0
    inverse_norms = torch.where(active, 1 / torch.where(active, norms, 1.0), 0.0)
    eye = torch.eye(k, dtype=matrix.dtype, device=matrix.device)
    cosines = torch.where(active.unsqueeze(0) & active.unsqueeze(1),
                          matrix * inverse_norms.unsqueeze(0) * inverse_norms.unsqueeze(1), eye)
    cosines = cosines + _ridge(cosines, eps) * eye
    starts = [1.0 / torch.sqrt(torch.diagonal(cosines))]
    if init is not None:
        starts.append(init.detach().to(matrix).clamp_min(1e-12))
    starts = _rescale_along_ray(torch.stack(starts), cosines)
    start = torch.index_select(starts, 0, torch.argmin(_barrier_objective(starts, cosines)).view(1)).squeeze(0)
    unit_alpha = solve_nash_equation(cosines, start, iterations, tolerance)
    return (unit_alpha * inverse_norms).to(gram.dtype), unit_alpha.to(gram.dtype)


def clip_factor(norm: Tensor, max_norm: float | None) -> Tensor:
    """torch's gradient-clipping factor ``min(1, max_norm / (norm + 1e-6))`` (1 when ``max_norm`` is None or <= 0)."""
    if max_norm is None or max_norm <= 0:
        return torch.ones_like(norm)
    return (max_norm / (norm + 1e-6)).clamp(max=1.0)


class NashMTL(GradientWeighting):
    """Nash bargaining weights alpha with (G G^T) alpha = 1/alpha (see the module docstring)."""

    def __init__(
        self,
        task_names: Sequence[str],
        update_weights_every: int = 1,
        max_norm: float | None = 1.0,
        iterations: int = 20,
        eps: float = 1e-10,
        tolerance: float = 1e-12,
        mode: str = "params",
        jacobian: str = "auto",
        jacobian_chunk: int | None = None,
        weight_ema: float = 0.0,
    ) -> None:
        super().__init__(task_names, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk, weight_ema=weight_ema)
        if not (isinstance(update_weights_every, int) and update_weights_every >= 1):
            raise ConfigError(f"weighting.update_weights_every must be an integer >= 1, got {update_weights_every!r}")
        if update_weights_every > 1 and weight_ema > 0:
            raise ConfigError("weighting.weight_ema averages freshly computed weights, but with "
                              f"weighting.update_weights_every={update_weights_every} Nash-MTL reuses its weights "
                              "between updates; set weighting.weight_ema=0 or weighting.update_weights_every=1")
        if max_norm is not None and not max_norm >= 0:
            raise ConfigError(f"weighting.max_norm must be >= 0 (0 or null: no clipping), got {max_norm}")
        if not (isinstance(iterations, int) and iterations >= 1):
            raise ConfigError(f"weighting.iterations must be an integer >= 1, got {iterations!r}")
        if not eps >= 0:
            raise ConfigError(f"weighting.eps must be >= 0, got {eps}")
        if not tolerance >= 0:
            raise ConfigError(f"weighting.tolerance must be >= 0 (0: always run all iterations), got {tolerance}")
        self.update_weights_every = update_weights_every
        self.max_norm = max_norm
        self.iterations = iterations
        self.eps = eps
        self.tolerance = tolerance
        self.register_buffer("alpha", torch.ones(self.num_tasks))  # last solution, true units (reused between updates)
        self.register_buffer("alpha_normalized", torch.ones(self.num_tasks))  # warm start: unit_alpha (unit gradients)
        # backward calls so far (counted when update_weights_every > 1); a Python int, so that deciding whether to
        # update needs no device sync
        self.calls = 0

    def get_extra_state(self) -> dict:
        return {"calls": self.calls}

    def set_extra_state(self, state: dict) -> None:
        self.calls = int(state["calls"])

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        tolerance = self.tolerance if grads.device.type == "cpu" else 0.0  # a GPU would wait for every read
        gram = grads @ grads.T
        alpha, unit_alpha = nash_mtl_weights(gram, self.alpha_normalized, self.iterations, self.eps, tolerance)
        nonzero = gram.diagonal() > 0  # a switched-off task keeps its stored alpha for the steps after it
        self.alpha.copy_(torch.where(nonzero, alpha, self.alpha))
        self.alpha_normalized.copy_(torch.where(nonzero, unit_alpha, self.alpha_normalized))
        direction = alpha @ grads
        factor = clip_factor(direction.norm(), self.max_norm)
        return Aggregation(direction * factor, alpha * factor)

    def keeps_gradients(self, wrt: str) -> bool:
        """Only when every step updates the weights (the other steps build alpha @ G alone)."""
        return self.update_weights_every == 1 and super().keeps_gradients(wrt)

    @property
    def cuda_graph_safe(self) -> bool:
        """Safe for CUDA graphs when every step updates alpha: the Python step counter is then not needed (nor
        advanced). On a GPU the solver runs all its iterations, without host reads."""
        return self.update_weights_every == 1

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        if self.update_weights_every == 1:
            return super().backward(losses, ctx)
        update = self.calls % self.update_weights_every == 0
        self.calls += 1
        if update:
            return super().backward(losses, ctx)
        return self._backward_with_previous_weights(losses, ctx)

    def _backward_with_previous_weights(self, losses: Tensor, ctx: StepContext) -> Tensor:
        """The shared part gets sum_i alpha_i g_i with the previous alpha (one backward through the trunk), clipped like
        ``aggregate``; task-specific parameters get their own unweighted gradients. A task switched off in this step
        has a zero gradient and weight 0."""
        combined = unscale(self.task_gradients(losses, ctx, combine=self.alpha.unsqueeze(0)), ctx.loss_scale)
        combined, own, back_factor = ctx.distributed.task_gradients(combined, per_sample=self.mode == "rep")
        factor = clip_factor(combined.norm(), self.max_norm)
        self.apply_direction(ctx, combined[0, own] * (factor * (ctx.loss_scale * back_factor)))
        return torch.where(active_tasks(losses), self.alpha * factor, 0.0).detach()
