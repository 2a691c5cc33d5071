"""Every arm's features, power and temperature forecast in one compiled call, for `morph.context.Featurizer`.

Compiled with numba (cached in __pycache__, so a process compiles it once): one call where NumPy needs
~20 on 61 arms, each costing more in dispatch than in arithmetic. A module of its own so that
importing `morph.context` — the rules' control flow does, for `NodeContext` — does not load numba:
only a `Featurizer`, i.e. the learned agent, imports this.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def arm_factors(pattern_flat, values, source, coords_pattern, m, cur, item_ms, cost, served_now, offered,
                above_floor, power_w, cur_cost_util, idle_w, cap_w, heat_per_w, temp_base, max_temp_c):
    """`Featurizer.factors`' arrays, compiled: (basisᵀ, coords, predicted temperature, predicted power).
    An arm's coords are its ``m`` features, then its served share, temperature margin and switch.

    Per arm: its capacity at the node's measured speed, the share of the offered load it serves, its
    power (idle plus the current dynamic power scaled by its relative cost × utilisation, at most the
    cap), the temperature the shield's thermal model predicts at that power after the horizon
    (``heat_per_w``·P + ``temp_base``: `morph.shield.ThermalEstimate.predict` rearranged), and its
    margin to ``max_temp_c``.
    """
    n_basis = pattern_flat.shape[0]
    basis_flat = np.empty(n_basis)
    for i in range(n_basis):
        basis_flat[i] = pattern_flat[i] * values[source[i]]
    n_arms, width = coords_pattern.shape
    coords = coords_pattern.copy()
    coords[cur, m + 2] = 0.0
    off = 1e-6 if 1e-6 > offered else offered
    dynamic = power_w - idle_w
    dynamic = (0.0 if 0.0 > dynamic else dynamic) / (1e-6 if 1e-6 > cur_cost_util else cur_cost_util)
    predicted = np.empty(n_arms)
    power = np.empty(n_arms)
    for a in range(n_arms):
        capacity = served_now / item_ms[a]
        share = capacity / off
        coords[a, m] = share if share < 1.0 else 1.0
        floor = capacity if above_floor or capacity > 1e-6 else 1e-6
        util = offered / floor
        util = util if util < 1.0 else 1.0
        p = util * cost[a] * dynamic
        p += idle_w
        p = p if p < cap_w else cap_w
        power[a] = p
        t = p * heat_per_w
        t += temp_base
        predicted[a] = t
        margin = (max_temp_c - t) / 10.0
        margin = margin if margin > -2.0 else -2.0
        coords[a, m + 1] = margin if margin < 1.0 else 1.0
    return basis_flat.reshape((width, n_basis // width)), coords, predicted, power
