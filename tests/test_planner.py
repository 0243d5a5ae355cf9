"""The MIH planner's greedy radius assignment, against the plain greedy it stands for.

``assign_radii`` takes each of the ``T + 1`` units from a heap (only the table that took
a unit changes its next cost); the plain form scans every table for the cheapest next
unit, the lowest table on a tie. Both must give the same radii and cost for any input,
and every plan must stay exact: ``sum(t_i + 1) >= T + 1`` unless every table is
exhausted (probing every key of a table finds every code)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hashmatch.indexes import planner


def plain_greedy(n, widths, radius, densities, obits):
    dens = densities or [None] * len(widths)
    obs = obits or list(widths)
    t = [-1] * len(widths)
    cost = [0.0] * len(widths)
    for _ in range(radius + 1):
        best, best_delta = 0, float("inf")
        for i, w in enumerate(widths):
            if t[i] >= w:
                continue
            delta = planner.table_cost(n, w, t[i] + 1, dens[i], obs[i]) - cost[i]
            if delta < best_delta:
                best, best_delta = i, delta
        if best_delta == float("inf"):
            break
        t[best] += 1
        cost[best] = planner.table_cost(n, widths[best], t[best], dens[best], obs[best])
    return t, sum(cost)


@st.composite
def tables(draw):
    widths = draw(st.lists(st.integers(1, 30), min_size=1, max_size=40))
    densities = draw(
        st.none() | st.lists(st.sampled_from([0.5, 1.0, 3.7, 100.0]), min_size=len(widths),
                             max_size=len(widths))
    )  # fmt: skip
    cuts = draw(st.lists(st.integers(0, 4), min_size=len(widths), max_size=len(widths)))
    obits = draw(st.none() | st.just([max(1, w - c) for w, c in zip(widths, cuts, strict=True)]))
    return widths, densities, obits


@given(
    n=st.sampled_from([0, 1, 8, 1000, 10**5, 10**6, 10**7]),
    radius=st.integers(0, 200),
    layout=tables(),
)
def test_assign_radii_is_the_plain_greedy_and_exact(n, radius, layout):
    widths, densities, obits = layout
    radii, cost = planner.assign_radii(n, widths, radius, densities, obits)
    assert (radii, cost) == plain_greedy(n, widths, radius, densities, obits)
    exhausted = all(t >= w for t, w in zip(radii, widths, strict=True))
    assert exhausted or sum(t + 1 for t in radii) >= radius + 1
