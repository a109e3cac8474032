"""Budgeted-allocation solvers: a Pareto-frontier dynamic program and 0/1 knapsack (exact DP and greedy).

* :func:`pareto_dp` -- a *multiple-choice* problem: every layer ``i`` takes exactly one option ``j`` with
  cost ``costs[i][j]`` (e.g. ZeroQ's sensitivity of layer ``i`` at bit width ``j``) and integer size
  ``sizes[i][j]``; minimise the summed cost subject to the summed size ``<= budget``. Exact: the DP keeps,
  after each layer, the Pareto frontier of (summed size, summed cost) over all partial assignments.
* :func:`pareto_frontier` -- the whole frontier (size, cost, choices), for plotting cost versus size.
* :func:`knapsack_01` -- exact 0/1 knapsack by dynamic programming over integer capacity.
* :func:`knapsack_greedy` -- the value/weight-ratio greedy heuristic (fast, not optimal).

Example::

    from torchslim.search.solvers import knapsack_01, pareto_dp
    pick = pareto_dp(costs=[[0.0, 1.0], [0.0, 5.0]], sizes=[[8, 4], [8, 4]], budget=12)   # -> [1, 0]
    chosen = knapsack_01(values=[6.0, 10.0, 12.0], weights=[1, 2, 3], capacity=5)          # -> [1, 2]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torchslim.core.errors import ConfigError

__all__ = ["FrontierPoint", "knapsack_01", "knapsack_greedy", "pareto_dp", "pareto_frontier"]


@dataclass(frozen=True)
class FrontierPoint:
    """One Pareto-optimal assignment: total ``size``, total ``cost`` and the option index per item."""

    size: int
    cost: float
    choices: tuple[int, ...]


def _check_choice_tables(costs: Sequence[Sequence[float]], sizes: Sequence[Sequence[int]]) -> None:
    if len(costs) != len(sizes):
        raise ConfigError(f"costs and sizes need one row per item; got {len(costs)} and {len(sizes)} rows")
    for i, (c, s) in enumerate(zip(costs, sizes, strict=True)):
        if len(c) == 0 or len(c) != len(s):
            raise ConfigError(
                f"item {i}: costs and sizes need the same, non-zero number of options; got {len(c)} and {len(s)}"
            )
        for v in s:
            if int(v) != v or v < 0:
                raise ConfigError(f"item {i}: sizes must be non-negative integers, got {v!r}")


def pareto_frontier(
    costs: Sequence[Sequence[float]], sizes: Sequence[Sequence[int]], budget: int | None = None
) -> list[FrontierPoint]:
    """Pareto frontier of (total size, total cost) over all one-option-per-item assignments.

    Points are sorted by increasing size and strictly decreasing cost; with ``budget`` only sizes
    ``<= budget`` are kept. Exact (no discretisation); the frontier has at most ``budget + 1`` points.
    """
    _check_choice_tables(costs, sizes)
    # a frontier entry: (size, cost, back-pointer) where the back-pointer is a linked list of choices
    Entry = tuple[int, float, tuple | None]  # type: ignore[type-arg]
    frontier: list[Entry] = [(0, 0.0, None)]
    for c_row, s_row in zip(costs, sizes, strict=True):
        cand: list[Entry] = []
        for size, cost, back in frontier:
            for j, (c, s) in enumerate(zip(c_row, s_row, strict=True)):
                ns = size + int(s)
                if budget is not None and ns > budget:
                    continue
                cand.append((ns, cost + float(c), (j, back)))
        cand.sort(key=lambda e: (e[0], e[1]))
        frontier = []
        best = float("inf")
        for e in cand:
            if e[1] < best:  # strictly better cost than every smaller-or-equal size
                frontier.append(e)
                best = e[1]
        if not frontier:
            break
    out = []
    for size, cost, back in frontier:
        picks: list[int] = []
        node = back
        while node is not None:
            picks.append(node[0])
            node = node[1]
        if len(picks) == len(costs):
            out.append(FrontierPoint(size, cost, tuple(reversed(picks))))
    return out


def pareto_dp(costs: list[list[float]], sizes: list[list[int]], budget: int) -> list[int]:
    """Option index per item minimising ``sum(costs[i][k_i])`` subject to ``sum(sizes[i][k_i]) <= budget``.

    Exact (matches brute force); ties are broken towards the smaller total size. Raises
    :class:`~torchslim.core.errors.ConfigError` when even the smallest option of every item exceeds the
    budget (the message gives the minimum feasible budget).
    """
    if budget < 0:
        raise ConfigError(f"budget must be >= 0, got {budget}")
    _check_choice_tables(costs, sizes)
    min_size = sum(min(int(v) for v in s) for s in sizes)
    if min_size > budget:
        raise ConfigError(
            f"pareto_dp: infeasible budget {budget}; the smallest option of every item already needs {min_size}"
        )
    front = pareto_frontier(costs, sizes, budget)
    return list(front[-1].choices)  # the largest feasible size has the lowest cost on the frontier


def _check_knapsack(values: Sequence[float], weights: Sequence[int], capacity: int) -> None:
    if len(values) != len(weights):
        raise ConfigError(f"values and weights differ in length: {len(values)} vs {len(weights)}")
    if capacity < 0:
        raise ConfigError(f"capacity must be >= 0, got {capacity}")
    for w in weights:
        if int(w) != w or w < 0:
            raise ConfigError(f"weights must be non-negative integers, got {w!r}")


def knapsack_01(values: Sequence[float], weights: Sequence[int], capacity: int) -> list[int]:
    """Exact 0/1 knapsack: sorted indices of the items maximising total value with total weight <= capacity.

    Dynamic programming over integer capacity, ``O(n * capacity)`` time and memory. Items with
    non-positive value are never taken.
    """
    _check_knapsack(values, weights, capacity)
    n = len(values)
    best = [0.0] * (capacity + 1)
    take = [[False] * (capacity + 1) for _ in range(n)]
    for i in range(n):
        w, v = int(weights[i]), float(values[i])
        if v <= 0:
            continue
        for c in range(capacity, w - 1, -1):
            cand = best[c - w] + v
            if cand > best[c]:
                best[c] = cand
                take[i][c] = True
    chosen: list[int] = []
    c = capacity
    for i in range(n - 1, -1, -1):
        if take[i][c]:
            chosen.append(i)
            c -= int(weights[i])
    return sorted(chosen)


def knapsack_greedy(values: Sequence[float], weights: Sequence[int], capacity: int) -> list[int]:
    """Greedy 0/1 knapsack: take items by decreasing value/weight while they fit (sorted indices).

    Not optimal in general (see :func:`knapsack_01`); zero-weight items with positive value come first.
    """
    _check_knapsack(values, weights, capacity)
    order = sorted(
        range(len(values)),
        key=lambda i: -(float("inf") if weights[i] == 0 else float(values[i]) / float(weights[i])),
    )
    chosen, used = [], 0
    for i in order:
        if values[i] <= 0:
            continue
        if used + int(weights[i]) <= capacity:
            chosen.append(i)
            used += int(weights[i])
    return sorted(chosen)
