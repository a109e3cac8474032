"""Budgeted-allocation solvers: Pareto DP and knapsack, checked against brute force."""

from __future__ import annotations

import itertools
import random

import pytest

from torchslim.core.errors import ConfigError
from torchslim.search.solvers import knapsack_01, knapsack_greedy, pareto_dp, pareto_frontier


def _brute_choice(costs, sizes, budget):
    best = None
    for combo in itertools.product(*[range(len(r)) for r in costs]):
        size = sum(sizes[i][j] for i, j in enumerate(combo))
        if size > budget:
            continue
        cost = sum(costs[i][j] for i, j in enumerate(combo))
        if best is None or cost < best[0] - 1e-12:
            best = (cost, combo)
    return best


@pytest.mark.parametrize("seed", range(25))
def test_pareto_dp_matches_brute_force(seed):
    """Random 2-6 items x 1-4 options: DP cost equals the brute-force optimum (abs 1e-9), budget respected."""
    rng = random.Random(seed)
    n = rng.randint(2, 6)
    costs = [[rng.random() * 10 for _ in range(rng.randint(1, 4))] for _ in range(n)]
    sizes = [[rng.randint(0, 12) for _ in row] for row in costs]
    lo = sum(min(r) for r in sizes)
    hi = sum(max(r) for r in sizes)
    budget = rng.randint(lo, hi)
    picks = pareto_dp(costs, sizes, budget)
    ref_cost, _ = _brute_choice(costs, sizes, budget)
    assert len(picks) == n
    assert sum(sizes[i][j] for i, j in enumerate(picks)) <= budget
    assert abs(sum(costs[i][j] for i, j in enumerate(picks)) - ref_cost) < 1e-9


def test_pareto_frontier_is_monotone_and_each_point_optimal():
    """Frontier sizes increase and costs strictly decrease; each point equals brute force at its size."""
    rng = random.Random(7)
    costs = [[rng.random() for _ in range(3)] for _ in range(5)]
    sizes = [[8, 4, 2] for _ in range(5)]
    front = pareto_frontier(costs, sizes)
    for a, b in itertools.pairwise(front):
        assert a.size < b.size and a.cost > b.cost
    for p in front:
        assert abs(p.cost - _brute_choice(costs, sizes, p.size)[0]) < 1e-9


def test_pareto_dp_errors():
    """Infeasible budget and ragged tables raise ConfigError naming the problem."""
    with pytest.raises(ConfigError, match="infeasible budget 3"):
        pareto_dp([[1.0], [1.0]], [[2], [2]], 3)
    with pytest.raises(ConfigError, match="same, non-zero number of options"):
        pareto_dp([[1.0, 2.0]], [[2]], 3)


@pytest.mark.parametrize("seed", range(20))
def test_knapsack_01_matches_brute_force_and_greedy_is_feasible(seed):
    """Exact DP value equals brute force (abs 1e-9); greedy is feasible and never better than the DP."""
    rng = random.Random(100 + seed)
    n = rng.randint(1, 10)
    values = [rng.random() * 10 for _ in range(n)]
    weights = [rng.randint(0, 8) for _ in range(n)]
    cap = rng.randint(0, 25)
    best = 0.0
    for mask in range(1 << n):
        items = [i for i in range(n) if mask >> i & 1]
        if sum(weights[i] for i in items) <= cap:
            best = max(best, sum(values[i] for i in items))
    dp = knapsack_01(values, weights, cap)
    gr = knapsack_greedy(values, weights, cap)
    assert sum(weights[i] for i in dp) <= cap and sum(weights[i] for i in gr) <= cap
    assert abs(sum(values[i] for i in dp) - best) < 1e-9
    assert sum(values[i] for i in gr) <= best + 1e-9


def test_greedy_is_suboptimal_on_classic_case():
    """Classic counter-example: greedy by ratio takes item 0 (value 6) and misses the optimum 22."""
    values, weights = [6.0, 10.0, 12.0], [1, 2, 3]
    assert knapsack_01(values, weights, 5) == [1, 2]
    assert knapsack_greedy(values, weights, 5) == [0, 1]
