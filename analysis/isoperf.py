"""Iso-performance: predicted loss over (N, C), iso-loss curves and the compute-optimal frontier.

Usage:
    from analysis.isoperf import loss_surface, frontier, iso_loss_curve, min_compute_for_loss
    Ns, Cs, L = loss_surface(fit.params, (1e6, 1e9), (1e15, 1e19), kappa=fit.kappa)
    frontier(fit.params, Cs, kappa=fit.kappa)           # N*, D*, loss* per compute

All functions take the parameters of L(N, D) = E + A/N^alpha + B/D^beta and use D = C / (kappa N)
(kappa = 6 for tokens; the fit's kappa when D counts samples). The plots are in analysis/plots.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from analysis.laws import compute_optimal


def predicted_loss(params: dict, N, C, kappa: float = 6.0) -> np.ndarray:
    """L(N, D = C / (kappa N))."""
    N = np.asarray(N, dtype=float)
    D = np.asarray(C, dtype=float) / (kappa * N)
    return params["E"] + params["A"] / N ** params["alpha"] + params["B"] / D ** params["beta"]


def loss_surface(params: dict, n_range, c_range, kappa: float = 6.0, num: int = 120):
    """(N values, C values, loss[C, N]) on a log grid."""
    Ns = np.logspace(np.log10(n_range[0]), np.log10(n_range[1]), num)
    Cs = np.logspace(np.log10(c_range[0]), np.log10(c_range[1]), num)
    return Ns, Cs, predicted_loss(params, Ns[None, :], Cs[:, None], kappa)


def frontier(params: dict, C, kappa: float = 6.0) -> pd.DataFrame:
    """Compute-optimal frontier: N*, D*, the loss there and D*/N* for each compute."""
    C = np.atleast_1d(np.asarray(C, dtype=float))
    n_opt, d_opt = compute_optimal(params, C, kappa)
    return pd.DataFrame(
        {
            "C": C,
            "N_opt": n_opt,
            "D_opt": d_opt,
            "loss_opt": predicted_loss(params, n_opt, C, kappa),
            "tokens_per_param": d_opt / n_opt,
        }
    )


def iso_loss_curve(params: dict, target: float, N, kappa: float = 6.0) -> pd.DataFrame:
    """The (N, D, C) that reach loss `target`: D = (B / (target - E - A/N^alpha))^(1/beta); NaN where a model
    of size N cannot reach the target with any amount of data."""
    N = np.asarray(N, dtype=float)
    headroom = target - params["E"] - params["A"] / N ** params["alpha"]
    with np.errstate(divide="ignore", invalid="ignore"):
        D = np.where(headroom > 0, (params["B"] / headroom) ** (1.0 / params["beta"]), np.nan)
    return pd.DataFrame({"N": N, "D": D, "C": kappa * N * D})


def min_compute_for_loss(params: dict, target: float, kappa: float = 6.0) -> dict:
    """Cheapest (C, N, D) reaching loss `target` (the frontier point of that iso-loss curve)."""
    if target <= params["E"]:
        return {"C": np.inf, "N": np.nan, "D": np.nan, "reachable": False}
    # smallest N that can reach the target at infinite data
    n_min = (params["A"] / (target - params["E"])) ** (1.0 / params["alpha"]) if params["alpha"] > 0 else 1.0

    def log_c(log_n: float) -> float:
        c = iso_loss_curve(params, target, [np.exp(log_n)], kappa)["C"].iloc[0]
        return float(np.log(c)) if np.isfinite(c) else 1e300

    lo = np.log(n_min) + 1e-9
    res = minimize_scalar(log_c, bounds=(lo, lo + 40.0), method="bounded", options={"xatol": 1e-10})
    n = float(np.exp(res.x))
    row = iso_loss_curve(params, target, [n], kappa).iloc[0]
    return {"C": float(row["C"]), "N": n, "D": float(row["D"]), "reachable": True}


def loss_levels(values, k: int = 8) -> np.ndarray:
    """k contour levels spread over the quantiles of observed or predicted losses."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    levels = np.unique(np.round(np.quantile(v, np.linspace(0.05, 0.95, k)), 4))
    return levels if len(levels) >= 2 else np.linspace(v.min(), v.max(), k)
