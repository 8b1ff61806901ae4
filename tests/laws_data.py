"""Synthetic scaling-law data shared by the analysis tests (not a test module).

from laws_data import TRUTH, isoflop_points
pts = isoflop_points(noise=0.01)      # DataFrame N, D, C, budget, loss
"""

import numpy as np
import pandas as pd

from analysis.laws import compute_optimal

TRUTH = {"E": 1.8, "A": 480.0, "alpha": 0.35, "B": 2100.0, "beta": 0.37}  # Chinchilla-like, tokens


def law(N, D, truth=TRUTH):
    return truth["E"] + truth["A"] / N ** truth["alpha"] + truth["B"] / D ** truth["beta"]


def isoflop_points(noise: float, seed: int = 0, truth=TRUTH) -> pd.DataFrame:
    """An IsoFLOP design: 5 budgets (1e18..1e21) x 7 sizes around each budget's compute-optimal N,
    D = C / (6 N), loss = the law x exp(noise x standard normal)."""
    rng = np.random.default_rng(seed)
    rows = []
    for C in np.logspace(18, 21, 5):
        n_opt, _ = compute_optimal(truth, C)
        for N in n_opt * np.logspace(-0.75, 0.75, 7):
            D = C / (6 * N)
            rows.append(
                {"N": N, "D": D, "C": C, "budget": C, "loss": law(N, D, truth) * np.exp(noise * rng.normal())}
            )
    return pd.DataFrame(rows)
