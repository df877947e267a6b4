"""Tests for the batched two-component GMM and MOD's Aligned Points Sampler (APS).

Truth comes from scikit-learn's ``GaussianMixture`` (the oracle the released MOD/PAA code calls), from
a per-GT loop written here after the released code, and from small hand-built cases.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from replicate.errors import ReplicateError
from replicate.models.aps import aps_select, resolve_conflicts
from replicate.models.gmm import _BlockEM, _initial_means, _padded_groups, gmm2_fit


def _sklearn_gmm(values: np.ndarray, tol: float) -> GaussianMixture:
    """The released code's call: weights 0.5/0.5, means [min, max], precisions 0.1."""
    gm = GaussianMixture(n_components=2, covariance_type="full", weights_init=[0.5, 0.5],
                         means_init=[[values.min()], [values.max()]], precisions_init=[[[0.1]], [[0.1]]],
                         tol=tol, reg_covar=1e-6)
    return gm.fit(values.reshape(-1, 1))


def _pad(groups: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded (G, N) values and validity mask; padding holds a far-away value to catch leaks."""
    width = max(len(g) for g in groups)
    x = torch.full((len(groups), width), 1e6, dtype=torch.float64)
    valid = torch.zeros(len(groups), width, dtype=torch.bool)
    for row, values in enumerate(groups):
        x[row, :len(values)] = torch.from_numpy(values)
        valid[row, :len(values)] = True
    return x, valid


@pytest.mark.parametrize("tol", [1e-3, 1e-6])
def test_gmm2_fit_matches_sklearn_on_bimodal_groups(tol: float) -> None:
    rng = np.random.default_rng(0)
    groups = []
    for size, low, high in [(6, 0.0, 5.0), (18, 1.0, 3.0), (40, -2.0, 8.0), (11, 0.5, 9.0), (90, 3.0, 4.5)]:
        n_low = size // 3 + 1
        values = np.concatenate([rng.normal(low, 0.3, n_low), rng.normal(high, 0.6, size - n_low)])
        groups.append(rng.permutation(values))
    x, valid = _pad(groups)
    fit = gmm2_fit(x, valid, tol=tol)
    labels, loglik = fit.predict(x), fit.score_samples(x)
    for row, values in enumerate(groups):
        gm = _sklearn_gmm(values, tol)
        n = len(values)
        np.testing.assert_allclose(fit.means[row].numpy(), gm.means_.ravel(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(fit.weights[row].numpy(), gm.weights_, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(fit.variances[row].numpy(), gm.covariances_.ravel(), rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(labels[row, :n].numpy(), gm.predict(values.reshape(-1, 1)))
        np.testing.assert_allclose(loglik[row, :n].numpy(), gm.score_samples(values.reshape(-1, 1)), atol=1e-9)
    assert bool(fit.converged.all())


def test_gmm2_fit_degenerate_groups_have_no_nan() -> None:
    groups = [np.array([2.5]), np.full(7, 1.25), np.array([0.0, 0.1, 5.0, 5.2]), np.array([])]
    x, valid = _pad([g if len(g) else np.zeros(1) for g in groups])
    valid[3] = False
    fit = gmm2_fit(x, valid)
    for tensor in (fit.weights, fit.means, fit.variances, fit.score_samples(x), fit.responsibilities(x)):
        assert bool(torch.isfinite(tensor).all())
    labels = fit.predict(x)
    assert labels[0, 0] == 0
    assert bool((labels[1, :7] == 0).all())
    assert torch.allclose(fit.means[1], torch.tensor([1.25, 1.25], dtype=torch.float64))
    assert labels[2, :4].tolist() == [0, 0, 1, 1]


def _aps_like_groups(groups: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """APS-sized problems: rows of up to 18 scores from two modes, some short, one single, one empty."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(groups, 18, generator=gen) * 0.5
    high = 2.0 + torch.rand(groups, 18, generator=gen) * 3.0
    x = torch.where(torch.rand(groups, 18, generator=gen) < 0.4, low, high).double()
    lengths = torch.randint(2, 19, (groups,), generator=gen)
    lengths[0], lengths[1] = 1, 0
    valid = torch.arange(18) < lengths.unsqueeze(1)
    return x, valid


def _assert_same_fit(a, b) -> None:
    for name in ("weights", "means", "variances", "converged"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.n_iter == b.n_iter


@pytest.mark.parametrize("iters,tol", [(1, 1e-3), (3, 1e-3), (6, 1e-6), (100, 1e-3), (100, 1e-8)])
def test_gmm2_fit_blocks_engine_is_the_loop(iters: int, tol: float) -> None:
    """Blocks of masked iterations (the CUDA-graph engine, run eagerly here) end in the loop's state,
    whatever ``iters`` is against the block size, including groups that never stop."""
    x, valid = _aps_like_groups(37, seed=iters)
    loop = gmm2_fit(x, valid, iters=iters, tol=tol, engine="loop")
    blocks = gmm2_fit(x, valid, iters=iters, tol=tol, engine="blocks")
    _assert_same_fit(blocks, loop)
    # the cases cover fits cut off by iters with groups still running, and fits that all stop early
    assert (loop.n_iter == iters and not bool(loop.converged.all())) or (loop.n_iter < iters and bool(loop.converged.all()))


def test_gmm2_fit_blocks_engine_padding_rows_change_nothing() -> None:
    """A captured graph serves padded group counts: the first rows of a padded state fit as alone,
    and refilling the state (a second fit on other data) starts afresh."""
    em = _BlockEM(64, 18, torch.device("cpu"), iters=100, tol=1e-3, reg_covar=1e-6, capture=False)
    for seed in (0, 1):
        x, valid = _aps_like_groups(37, seed=seed)
        x64 = torch.where(valid, x, torch.zeros_like(x))
        em.load(x64, valid, _initial_means(x64, valid), var_init=10.0)
        padded = em.run(37)
        alone = gmm2_fit(x, valid, iters=100, tol=1e-3, engine="loop")
        torch.testing.assert_close(padded.means, alone.means, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(padded.variances, alone.variances, rtol=1e-12, atol=1e-12)
        assert torch.equal(padded.converged, alone.converged) and padded.n_iter == alone.n_iter


def test_padded_groups_is_the_next_power_of_two_from_32() -> None:
    assert [_padded_groups(g) for g in (0, 1, 32, 33, 112, 128, 129)] == [32, 32, 32, 64, 128, 128, 256]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run by scripts/device_check.sh)")
def test_gmm2_fit_cuda_graph_matches_the_loop_on_cuda() -> None:
    """On CUDA the default engine replays a captured graph; twice on new data (the cached graph) it
    gives the loop's fit on the same device."""
    for seed in (0, 1, 2):
        x, valid = _aps_like_groups(112 - seed * 30, seed=seed)
        x, valid = x.cuda(), valid.cuda()
        loop = gmm2_fit(x, valid, iters=100, tol=1e-3, engine="loop")
        graph = gmm2_fit(x, valid, iters=100, tol=1e-3)
        torch.testing.assert_close(graph.means, loop.means, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(graph.weights, loop.weights, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(graph.variances, loop.variances, rtol=1e-12, atol=1e-12)
        assert torch.equal(graph.predict(x), loop.predict(x))
        assert torch.equal(graph.converged, loop.converged) and graph.n_iter == loop.n_iter


def test_gmm2_fit_rejects_bad_shapes() -> None:
    with pytest.raises(ReplicateError, match="valid"):
        gmm2_fit(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ReplicateError, match="bool"):
        gmm2_fit(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ReplicateError, match="engine"):
        gmm2_fit(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), engine="graph")


def _select(cost_cls: list[float], cost_reg: list[float], levels: list[int], num_levels: int = 3,
            candidate: list[bool] | None = None, **kwargs: object) -> list[int]:
    """Run ``aps_select`` for one GT and return the indices of its positives."""
    cls = torch.tensor([cost_cls])
    reg = torch.tensor([cost_reg])
    cand = torch.ones_like(cls, dtype=torch.bool) if candidate is None else torch.tensor([candidate])
    positive = aps_select(cls, reg, cand, torch.tensor(levels), num_levels, **kwargs)
    assert positive.shape == cls.shape and positive.dtype == torch.bool
    return positive[0].nonzero()[:, 0].tolist()


@pytest.mark.parametrize("score", ["paper", "code"])
def test_topk_decides_which_levels_are_kept(score: str) -> None:
    # level 0: 3 cheap points (cost 0.5) and 9 dear ones (cost 3); level 1: cost 1; level 2: cost 2.
    half = [0.25] * 3 + [1.5] * 9 + [0.5] * 12 + [1.0] * 12
    levels = [0] * 12 + [1] * 12 + [2] * 12
    # K=3: level means 0.5, 1, 2 -> levels 0 and 1 kept; the cheap cluster (0, 1, 2) is positive.
    assert _select(half, half, levels, topk=3, score=score) == [0, 1, 2]
    # K=9: level-0 mean (3*0.5 + 6*3)/9 = 2.17 > 2 -> levels 1 and 2 kept; the globally cheapest points
    # are not even candidates. Positives: 9 of the (tied) level-1 points, none of level 2.
    positives = _select(half, half, levels, topk=9, score=score)
    assert len(positives) == 9 and all(12 <= p < 24 for p in positives)


@pytest.mark.parametrize("score", ["paper", "code"])
def test_level_with_fewer_points_than_topk(score: str) -> None:
    # Level 0 has only 4 candidates (N_l = min(9, 4)): its mean is over those 4, not padded.
    # Points 4 and 5 are cheaper still but are not candidates of this GT.
    half = [0.1] * 4 + [0.01, 0.01] + [2.0] * 12 + [3.0] * 12
    levels = [0] * 6 + [1] * 12 + [2] * 12
    candidate = [True] * 4 + [False, False] + [True] * 24
    assert _select(half, half, levels, candidate=candidate, score=score) == [0, 1, 2, 3]


@pytest.mark.parametrize("score", ["paper", "code"])
def test_single_level_with_candidates(score: str) -> None:
    half = [0.1] * 3 + [2.0] * 6 + [0.0] * 5
    levels = [1] * 9 + [0] * 5
    candidate = [True] * 9 + [False] * 5
    assert _select(half, half, levels, candidate=candidate, score=score) == [0, 1, 2]


def test_single_candidate_is_taken() -> None:
    candidate = [False, False, True, False]
    assert _select([0.3, 0.1, 0.9, 0.2], [0.4, 0.1, 0.8, 0.2], [0, 0, 1, 2], candidate=candidate) == [2]


def test_gt_without_candidates_gets_nothing() -> None:
    assert _select([0.3, 0.1], [0.4, 0.1], [0, 1], candidate=[False, False]) == []


def test_code_score_rejects_misaligned_points() -> None:
    # Level 0: five aligned points (cls = reg = 1) and four misaligned ones (cls 1.9, reg 0.1), all with
    # total loss 2. Level 1: aligned points with total 2.1. Level 2: dear. Code S on the kept levels:
    # aligned 0.1 * 10 * sqrt(0.5 * 2) = 1.0, level 1 sqrt(0.5 * 2.1) = 1.025, misaligned
    # sqrt(sigmoid(1.8) * 2) = 1.31. Only the S_m term separates the misaligned points from the aligned.
    cls = [1.0] * 5 + [1.9] * 4 + [1.05] * 9 + [2.5] * 9
    reg = [1.0] * 5 + [0.1] * 4 + [1.05] * 9 + [2.5] * 9
    levels = [0] * 9 + [1] * 9 + [2] * 9
    assert _select(cls, reg, levels, score="code") == list(range(5)) + list(range(9, 18))


def _reference_one_gt(cls: np.ndarray, reg: np.ndarray, levels: np.ndarray, score: str) -> set[int]:
    """Per-GT loop after the released code (levels, top-9, top-2 levels, score, sklearn GMM, PAA cut)."""
    picked = []
    for level in np.unique(levels):
        points = np.nonzero(levels == level)[0]
        order = points[np.argsort(cls[points] + reg[points])][:9]
        picked.append(order)
    if len(picked) > 1:
        means = [np.mean(cls[p] + reg[p]) for p in picked]
        first, second = np.argsort(means)[:2]
        idx = np.concatenate([picked[first], picked[second]])
    else:
        idx = picked[0]
    c, r = cls[idx], reg[idx]
    if score == "code":
        gap = 1.0 / (1.0 + np.exp(-np.abs(c - r)))
        s = 10.0 * (np.sqrt(gap * (c + r)) if len(picked) > 1 else c + r)
    else:
        softmax_c, softmax_r = np.exp(c) / np.exp(c).sum(), np.exp(r) / np.exp(r).sum()
        s = np.sqrt((softmax_c + softmax_r) / 2 / (1.0 + np.exp(-np.abs(c - r))))
    gm = _sklearn_gmm(s, tol=1e-3)
    fg = gm.predict(s.reshape(-1, 1)) == 0
    loglik = gm.score_samples(s.reshape(-1, 1))
    threshold = s[np.nonzero(fg)[0][np.argmax(loglik[fg])]]
    return set(idx[fg & (s <= threshold)].tolist())


@pytest.mark.parametrize("score", ["paper", "code"])
def test_batched_matches_per_gt_reference_and_separate_calls(score: str) -> None:
    gen = torch.Generator().manual_seed(3)
    num_gt, num_points = 5, 70
    levels = torch.tensor([0] * 30 + [1] * 20 + [2] * 12 + [3] * 8)
    cls = torch.rand(num_gt, num_points, generator=gen, dtype=torch.float64) * 2
    reg = torch.rand(num_gt, num_points, generator=gen, dtype=torch.float64)
    candidate = torch.rand(num_gt, num_points, generator=gen) < 0.6
    candidate[4] = levels == 2  # one GT with candidates on a single level
    batched = aps_select(cls, reg, candidate, levels, 4, score=score)
    for gt in range(num_gt):
        alone = aps_select(cls[gt:gt + 1], reg[gt:gt + 1], candidate[gt:gt + 1], levels, 4, score=score)
        assert torch.equal(alone[0], batched[gt])
        points = candidate[gt].nonzero()[:, 0].numpy()
        expected = _reference_one_gt(cls[gt, points].numpy(), reg[gt, points].numpy(), levels[points].numpy(), score)
        assert set(points[batched[gt].numpy()[points]].tolist()) == {int(points[i]) for i in expected}
        assert not bool((batched[gt] & ~candidate[gt]).any())
        assert 1 <= int(batched[gt].sum()) <= 18


def test_aps_select_rejects_bad_arguments() -> None:
    cost = torch.zeros(2, 5)
    cand = torch.ones(2, 5, dtype=torch.bool)
    levels = torch.zeros(5, dtype=torch.long)
    with pytest.raises(ReplicateError, match="unknown score"):
        aps_select(cost, cost, cand, levels, 1, score="softmax")
    with pytest.raises(ReplicateError, match="cost_reg"):
        aps_select(cost, torch.zeros(2, 4), cand, levels, 1)
    with pytest.raises(ReplicateError, match="level_of_point"):
        aps_select(cost, cost, cand, torch.zeros(4, dtype=torch.long), 1)


def test_resolve_conflicts_follows_area_order_within_images() -> None:
    # Image 0 (areas): a=10 takes {0, 1}; b=20 wants {1, 2} -> collides with a, rejected;
    # c=30 wants {2, 3} -> b was rejected, so no collision, accepted. Image 1: e=5 takes {0};
    # d=50 wants {0} -> rejected. Point indices are per image: a and e both use point 0 freely.
    rows = {"c": [2, 3], "a": [0, 1], "d": [0], "b": [1, 2], "e": [0]}
    area = {"a": 10.0, "b": 20.0, "c": 30.0, "d": 50.0, "e": 5.0}
    image = {"a": 0, "b": 0, "c": 0, "d": 1, "e": 1}
    names = list(rows)
    positive = torch.zeros(len(names), 4, dtype=torch.bool)
    for row, name in enumerate(names):
        positive[row, rows[name]] = True
    kept = resolve_conflicts(positive, torch.tensor([area[n] for n in names]), torch.tensor([image[n] for n in names]))
    accepted = {n for row, n in enumerate(names) if bool(kept[row].any())}
    assert accepted == {"a", "c", "e"}
    for row, name in enumerate(names):
        if name in accepted:
            assert torch.equal(kept[row], positive[row])


def test_resolve_conflicts_rejects_bad_shapes() -> None:
    with pytest.raises(ReplicateError, match="gt_area"):
        resolve_conflicts(torch.ones(2, 3, dtype=torch.bool), torch.ones(3), torch.zeros(2))


def test_empty_inputs_work() -> None:
    empty = aps_select(torch.zeros(0, 6), torch.zeros(0, 6), torch.zeros(0, 6, dtype=torch.bool),
                       torch.zeros(6, dtype=torch.long), 1)
    assert empty.shape == (0, 6)
    assert gmm2_fit(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.bool)).means.shape == (0, 2)
