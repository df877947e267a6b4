"""Batched EM for many independent one-dimensional, two-component Gaussian mixtures.

Label assigners such as PAA (Kim & Lee 2020) and MOD's Aligned Points Sampler fit one small
two-component mixture per ground truth. The released codes call scikit-learn once per ground truth::

    GaussianMixture(n_components=2, weights_init=[.5, .5], means_init=[[min], [max]],
                    precisions_init=[[[.1]], [[.1]]])

:func:`gmm2_fit` fits G such mixtures at once: the groups are the rows of a padded (G, N) tensor and
a ``valid`` mask says which entries are data. It follows scikit-learn's EM step for step, so the
fitted parameters and predicted labels agree with it:

* initialisation from the given weights, means and precisions (no k-means);
* each iteration is an E-step with the current parameters, then an M-step where
  ``n_k = sum(resp) + 10 * eps``, ``mean_k = sum(resp * x) / n_k``,
  ``var_k = sum(resp * (x - mean_k)^2) / n_k + reg_covar`` and ``weight_k = n_k / sum(n)``;
* the lower bound of an iteration is the mean per-point log-likelihood of its E-step; a group stops
  when the bound changes by less than ``tol`` (its parameters then stay frozen) and the loop ends
  once every group has stopped or after ``iters`` iterations;
* predictions use the final parameters; ties go to component 0.

Arithmetic is done in float64 (scikit-learn keeps float32 input in float32, so tiny differences in
the last digits are expected). A group with a single valid point, or whose values are all equal,
ends with both means at that value and variance ``reg_covar``; every point is then predicted in
component 0. An empty group gives finite parameters that should simply be ignored.

Two engines run the same EM step (``engine``):

* ``"loop"``: one Python iteration per EM iteration, asking the device after each whether any group is
  still active. The default off CUDA, and the arithmetic the CPU records were produced with.
* ``"blocks"``: the iterations run in blocks of :data:`BLOCK` on fixed-size state tensors, updated in
  place; an iteration past ``iters`` or of a stopped group changes nothing, so the fitted parameters,
  ``n_iter`` and ``converged`` are those of the loop. The host asks "has every group stopped?" once per
  block. On CUDA (its default there) a block is captured once as a CUDA graph, per padded group count
  (the next power of two, at least 32) and settings, and replayed: one launch per block instead of a few
  dozen small kernels per iteration, each paying PyTorch's host-side dispatch. Elsewhere the blocks run
  eagerly (that is how the tests check them against the loop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from replicate.errors import ReplicateError

_LOG_2PI = math.log(2.0 * math.pi)
ENGINES = ("auto", "loop", "blocks")
BLOCK = 4  # EM iterations per block of the "blocks" engine (APS's paper score converges in ~3, the code's in ~32)
_MIN_PADDED_GROUPS = 32
_GRAPHS: dict[tuple, "_BlockEM"] = {}  # captured CUDA graphs, by device, padded shape and settings
_MAX_GRAPHS = 32


@dataclass
class GMM2:
    """Fitted parameters of G two-component 1-D Gaussian mixtures (float64).

    Attributes:
        weights: (G, 2) mixing weights, each row sums to 1.
        means: (G, 2) component means; component 0 starts at the group minimum.
        variances: (G, 2) component variances (``reg_covar`` included).
        n_iter: number of EM iterations run (the largest over the groups).
        converged: (G,) bool, whether the group met ``tol`` before ``iters``.
    """

    weights: Tensor
    means: Tensor
    variances: Tensor
    n_iter: int
    converged: Tensor

    def component_log_prob(self, x: Tensor) -> Tensor:
        """Log-density of each point under each component, without the weights: (G, N, 2)."""
        return _component_log_prob(x.to(self.means.dtype), self.means, self.variances)

    def weighted_log_prob(self, x: Tensor) -> Tensor:
        """``log weight_k + log N(x | mean_k, var_k)`` for each point and component: (G, N, 2)."""
        return self.component_log_prob(x) + self.weights.log().unsqueeze(1)

    def score_samples(self, x: Tensor) -> Tensor:
        """Log-likelihood of each point under the whole mixture: (G, N) (scikit-learn's ``score_samples``)."""
        return torch.logsumexp(self.weighted_log_prob(x), dim=-1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """Posterior probability of each component for each point: (G, N, 2)."""
        return torch.softmax(self.weighted_log_prob(x), dim=-1)

    def predict(self, x: Tensor) -> Tensor:
        """Most probable component (0 or 1) of each point: (G, N) long; ties go to component 0."""
        return self.weighted_log_prob(x).argmax(dim=-1)


def _component_log_prob(x: Tensor, means: Tensor, variances: Tensor) -> Tensor:
    """Gaussian log-density of x (G, N) under means/variances (G, 2): (G, N, 2)."""
    diff = x.unsqueeze(-1) - means.unsqueeze(1)
    var = variances.unsqueeze(1)
    return -0.5 * (_LOG_2PI + var.log() + diff * diff / var)


def _initial_means(x: Tensor, valid: Tensor) -> Tensor:
    """[min, max] of the valid values of each group (0 for empty groups): (G, 2)."""
    low = torch.where(valid, x, torch.full_like(x, math.inf)).amin(dim=1)
    high = torch.where(valid, x, torch.full_like(x, -math.inf)).amax(dim=1)
    empty = ~valid.any(dim=1)
    low = torch.where(empty, torch.zeros_like(low), low)
    high = torch.where(empty, torch.zeros_like(high), high)
    return torch.stack([low, high], dim=1)


def _e_step(x: Tensor, valid: Tensor, weights: Tensor, means: Tensor, variances: Tensor) -> tuple[Tensor, Tensor]:
    """Responsibilities (G, N, 2), zero on invalid points, and the mean log-likelihood (G,) per group."""
    weighted = _component_log_prob(x, means, variances) + weights.log().unsqueeze(1)
    norm = torch.logsumexp(weighted, dim=-1)
    resp = torch.exp(weighted - norm.unsqueeze(-1)) * valid.unsqueeze(-1)
    count = valid.sum(dim=1).clamp(min=1)
    bound = torch.where(valid, norm, torch.zeros_like(norm)).sum(dim=1) / count
    return resp, bound


def _m_step(x: Tensor, resp: Tensor, reg_covar: float) -> tuple[Tensor, Tensor, Tensor]:
    """Weights, means and variances (each (G, 2)) from responsibilities, as scikit-learn computes them."""
    nk = resp.sum(dim=1) + 10.0 * torch.finfo(x.dtype).eps
    means = (resp * x.unsqueeze(-1)).sum(dim=1) / nk
    diff = x.unsqueeze(-1) - means.unsqueeze(1)
    variances = (resp * diff * diff).sum(dim=1) / nk + reg_covar
    weights = nk / nk.sum(dim=1, keepdim=True)
    return weights, means, variances


def _check_inputs(x: Tensor, valid: Tensor, iters: int, engine: str) -> None:
    """Raise :class:`ReplicateError` for inputs :func:`gmm2_fit` cannot use."""
    if x.dim() != 2:
        raise ReplicateError(f"gmm2_fit: x must be (G, N), got shape {tuple(x.shape)}")
    if valid.shape != x.shape:
        raise ReplicateError(f"gmm2_fit: valid has shape {tuple(valid.shape)}, x has {tuple(x.shape)}")
    if valid.dtype != torch.bool:
        raise ReplicateError(f"gmm2_fit: valid must be a bool tensor, got {valid.dtype}")
    if iters < 1:
        raise ReplicateError(f"gmm2_fit: iters must be >= 1, got {iters}")
    if engine not in ENGINES:
        raise ReplicateError(f"gmm2_fit: unknown engine {engine!r}; expected one of {ENGINES}")


class _BlockEM:
    """EM state of ``groups`` padded groups of ``n`` values, advanced :data:`BLOCK` iterations per call.

    Every tensor is allocated once and updated in place, so that a block can be captured as a CUDA graph
    and replayed on new data (:meth:`load` refills the state). An iteration past ``iters`` and the
    update of a group that has stopped are masked out (``torch.where``), which makes surplus iterations
    no-ops: the state after any number of blocks is the loop's after ``min(iters, iterations run)``.
    """

    def __init__(self, groups: int, n: int, device: torch.device, iters: int, tol: float, reg_covar: float,
                 capture: bool) -> None:
        self.iters, self.tol, self.reg_covar = iters, tol, reg_covar
        f64 = dict(dtype=torch.float64, device=device)
        self.x = torch.zeros(groups, n, **f64)
        self.valid = torch.zeros(groups, n, dtype=torch.bool, device=device)
        self.weights = torch.full((groups, 2), 0.5, **f64)
        self.means = torch.zeros(groups, 2, **f64)
        self.variances = torch.ones(groups, 2, **f64)
        self.active = torch.ones(groups, dtype=torch.bool, device=device)
        self.bound = torch.full((groups,), -math.inf, **f64)
        self.count = torch.zeros(groups, dtype=torch.long, device=device)  # iterations each group was active
        self.step = torch.zeros((), dtype=torch.long, device=device)  # iterations run, surplus ones included
        self.graph = None
        if capture:
            self._capture(device)

    def _capture(self, device: torch.device) -> None:
        """Warm up on a side stream (as CUDA graph capture requires), then capture one block."""
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            self._block()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread-local: CUDA calls of other threads (a data loader pinning memory) do not break the capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._block()
        self.graph = graph

    def _block(self) -> None:
        for _ in range(BLOCK):
            in_range = self.step < self.iters
            live = self.active & in_range
            resp, new_bound = _e_step(self.x, self.valid, self.weights, self.means, self.variances)
            weights, means, variances = _m_step(self.x, resp, self.reg_covar)
            keep = live.unsqueeze(1)
            self.weights.copy_(torch.where(keep, weights, self.weights))
            self.means.copy_(torch.where(keep, means, self.means))
            self.variances.copy_(torch.where(keep, variances, self.variances))
            self.count.add_(live.long())
            stopped = (new_bound - self.bound).abs() < self.tol
            self.active.copy_(self.active & ~(stopped & in_range))
            self.bound.copy_(torch.where(in_range, new_bound, self.bound))
            self.step.add_(1)

    def load(self, x64: Tensor, valid: Tensor, means: Tensor, var_init: float) -> None:
        """Start a fit of ``x64.shape[0]`` groups; the padding rows are empty groups."""
        groups = x64.shape[0]
        self.x.zero_()
        self.x[:groups].copy_(x64)
        self.valid.zero_()
        self.valid[:groups].copy_(valid)
        self.weights.fill_(0.5)
        self.means.zero_()
        self.means[:groups].copy_(means)
        self.variances.fill_(float(var_init))
        self.active.fill_(True)
        self.bound.fill_(-math.inf)
        self.count.zero_()
        self.step.zero_()

    def run(self, groups: int) -> GMM2:
        """Advance block by block until the first ``groups`` groups have stopped or ``iters`` is reached."""
        for _ in range(math.ceil(self.iters / BLOCK)):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._block()
            if not bool(self.active[:groups].any()):
                break
        counts = self.count[:groups]
        n_iter = int(counts.max()) if groups else 0
        return GMM2(weights=self.weights[:groups].clone(), means=self.means[:groups].clone(),
                    variances=self.variances[:groups].clone(), n_iter=n_iter, converged=~self.active[:groups])


def _padded_groups(groups: int) -> int:
    """The group count a CUDA graph is captured for: the next power of two, at least 32."""
    return max(_MIN_PADDED_GROUPS, 1 << max(groups - 1, 0).bit_length())


def _block_em(x64: Tensor, valid: Tensor, means: Tensor, iters: int, tol: float, reg_covar: float,
              var_init: float) -> GMM2:
    """The ``"blocks"`` engine: a cached CUDA graph on CUDA (outside any capture), eager blocks elsewhere."""
    groups, n = x64.shape
    device = x64.device
    capture = device.type == "cuda" and not torch.cuda.is_current_stream_capturing()
    if not capture:
        em = _BlockEM(groups, n, device, iters, tol, reg_covar, capture=False)
    else:
        key = (device.index, _padded_groups(groups), n, iters, tol, reg_covar)
        em = _GRAPHS.get(key)
        if em is None:
            if len(_GRAPHS) >= _MAX_GRAPHS:
                _GRAPHS.pop(next(iter(_GRAPHS)))
            em = _GRAPHS[key] = _BlockEM(key[1], n, device, iters, tol, reg_covar, capture=True)
    em.load(x64, valid, means, var_init)
    return em.run(groups)


def gmm2_fit(
    x: Tensor,
    valid: Tensor,
    iters: int = 100,
    tol: float = 1e-6,
    reg_covar: float = 1e-6,
    means_init: Tensor | None = None,
    var_init: float = 10.0,
    engine: str = "auto",
) -> GMM2:
    """Fit G independent two-component 1-D Gaussian mixtures with EM, all groups at once.

    Args:
        x: (G, N) values; entries where ``valid`` is False are ignored.
        valid: (G, N) bool, which entries of each group are data.
        iters: maximum number of EM iterations (scikit-learn's ``max_iter``).
        tol: a group stops when its mean log-likelihood changes by less than this.
        reg_covar: added to every variance in the M-step.
        means_init: optional (G, 2) initial means; default ``[min, max]`` of each group's valid values.
        var_init: initial variance of both components (precision 0.1 -> variance 10).
        engine: ``"loop"``, ``"blocks"`` (see the module docstring) or ``"auto"``: blocks on CUDA,
            the loop elsewhere.

    Returns:
        The fitted :class:`GMM2`; weights start at [0.5, 0.5].
    """
    _check_inputs(x, valid, iters, engine)
    x64 = torch.where(valid, x, torch.zeros_like(x)).to(torch.float64)
    groups = x.shape[0]
    means = _initial_means(x64, valid) if means_init is None else means_init.to(x64)
    if engine == "blocks" or (engine == "auto" and x.device.type == "cuda"):
        with torch.no_grad():
            return _block_em(x64, valid, means, iters, tol, reg_covar, var_init)
    weights = torch.full((groups, 2), 0.5, dtype=torch.float64, device=x.device)
    variances = torch.full((groups, 2), float(var_init), dtype=torch.float64, device=x.device)
    active = torch.ones(groups, dtype=torch.bool, device=x.device)
    bound = torch.full((groups,), -math.inf, dtype=torch.float64, device=x.device)
    n_iter = 0
    while n_iter < iters and bool(active.any()):
        n_iter += 1
        resp, new_bound = _e_step(x64, valid, weights, means, variances)
        new_weights, new_means, new_variances = _m_step(x64, resp, reg_covar)
        keep = active.unsqueeze(1)
        weights = torch.where(keep, new_weights, weights)
        means = torch.where(keep, new_means, means)
        variances = torch.where(keep, new_variances, variances)
        active = active & ~((new_bound - bound).abs() < tol)
        bound = new_bound
    return GMM2(weights=weights, means=means, variances=variances, n_iter=n_iter, converged=~active)


def gmm2_positives(score: Tensor, valid: Tensor, *, iters: int = 100, tol: float = 1e-3, var_init: float = 10.0,
                   single: bool = True) -> Tensor:
    """The positives of a GMM-based assigner (PAA, Kim & Lee 2020; MOD's APS), one group per row: (G, N) bool.

    Each row's valid scores (a cost: lower is better) get a two-component mixture started at their minimum
    and maximum (:func:`gmm2_fit`). The positives are the members of the component started at the minimum
    whose score is at most that of the member with the highest mixture log-likelihood (the released PAA and
    MOD codes' truncation: in ascending score, everything up to that member). A row with a single valid score
    takes it when ``single`` (MOD's code) and gets nothing otherwise (PAA's code skips it).
    """
    fit = gmm2_fit(score, valid, iters=iters, tol=tol, var_init=var_init)
    foreground = (fit.predict(score) == 0) & valid
    loglik = torch.where(foreground, fit.score_samples(score), torch.full_like(fit.means[:, :1], -math.inf))
    threshold = score.gather(1, loglik.argmax(dim=1, keepdim=True))
    one = valid.sum(dim=1, keepdim=True) == 1
    chosen = foreground & (score <= threshold)
    return (chosen & ~one) | (valid & one) if single else chosen & ~one
