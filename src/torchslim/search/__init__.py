"""Budgeted-allocation solvers shared by mixed-precision and pruning searches.

Import the solvers from :mod:`torchslim.search.solvers` (kept out of this ``__init__`` so importing the
package stays light): :func:`~torchslim.search.solvers.pareto_dp`,
:func:`~torchslim.search.solvers.knapsack_01`, :func:`~torchslim.search.solvers.knapsack_greedy`.
"""

from __future__ import annotations
