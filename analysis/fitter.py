"""The optimiser behind every scaling-law fit: a summed Huber loss on log residuals, minimised from many starts.

Usage (library; the laws themselves are in analysis/laws.py):
    from analysis.fitter import fit_log, huber_objective, numerical_hessian
    opt = fit_log(np.log(np.c_[N, D]), np.log(loss), delta=1e-3)   # multi-start L-BFGS-B
    opt.theta, opt.objective                                       # [e, a, alpha, b, beta], Huber sum
    H = numerical_hessian(opt.theta, log_x, log_y, delta)          # central differences of the gradient

Parameter layout (theta, log space): [e, c_1, k_1, ..., c_m, k_m] for log L = LSE(e, c_j - k_j log x_j), i.e.
L = E + sum_j C_j / x_j^k_j with E = e^e, C_j = e^c_j. m = 2 is Hoffmann et al.'s L(N, D) (arXiv 2203.15556),
m = 1 a data curve L(D). The fitting follows Besiroglu et al. 2024 (arXiv 2404.10102, with the data and code
in Epoch AI's analyzing-chinchilla repository): minimise the SUM (not the mean) of Huber_delta(log L_pred -
log L_obs) with L-BFGS-B from many starts. Two measured facts (reproduced in tests/test_analysis_laws.py):
  * with scipy's default stopping rule (relative reduction of f below ~2e-9 of max(|f|, 1)) a start at
    Hoffmann's values stops at once, because the objective is ~1e-3; we use tight tolerances (TIGHT);
  * some starts end in real local minima (objective ~1e-2 on Chinchilla), so we screen a grid of starts
    vectorised and run L-BFGS-B from the best few of two families (Epoch's grid and a variable-projection
    grid: non-negative least squares for E, A, B at fixed exponents).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import OptimizeResult, minimize, nnls
from scipy.special import logsumexp

# Tight L-BFGS-B tolerances: the summed Huber objective is ~1e-3, so scipy's default ftol (2.2e-9 relative
# to max(|f|, 1)) stops early; see the module docstring.
TIGHT = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000, "maxfun": 20000}
# Bounds in log space: [e, (coef, exponent) per term]. Wide enough to be inactive on any sane fit; an
# estimate on a bound is reported as not identified (analysis/diagnostics.py).
E_BOUNDS = (-20.0, 10.0)
COEF_BOUNDS = (-50.0, 200.0)
EXP_BOUNDS = (0.0, 5.0)
# bootstrap refits start at the optimum; one that needs more iterations sits on a flat, unidentified ridge
BOOT_MAXITER = 500
# a parameter within this distance of a bound counts as on it
BOUND_TOL = 1e-6
PARAM_NAMES = {1: ("E", "B", "beta"), 2: ("E", "A", "alpha", "B", "beta")}


class FitError(ValueError):
    """A fit that cannot be made (too few points, invalid values); the message names the problem."""


def check_inputs(arrays: dict[str, np.ndarray], n_min: int) -> int:
    """Equal lengths, finite and positive values, at least n_min points; returns n or raises FitError."""
    n = None
    for name, a in arrays.items():
        if n is None:
            n = len(a)
        if len(a) != n:
            raise FitError(f"{name} has {len(a)} values, expected {n}")
        if not np.all(np.isfinite(a)):
            raise FitError(f"{name} contains NaN or infinite values")
        if np.any(a <= 0):
            raise FitError(f"{name} must be positive (min {np.min(a):.3g})")
    if n is None or n < n_min:
        raise FitError(f"too few points: {n or 0} (need at least {n_min})")
    return n


# ---------------------------------------------------------------------------------------------------------
# objective


def huber_objective(
    theta: np.ndarray, log_x: np.ndarray, log_y: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    """Summed Huber loss of log residuals and its analytic gradient.

    theta = [e, c_1, k_1, ..., c_m, k_m]; prediction log L = LSE(e, c_j - k_j log x_j); log_x is (n, m).
    Huber as scipy.special.huber: r^2/2 for |r| <= delta, else delta (|r| - delta/2).
    """
    n, m = log_x.shape
    z = np.empty((n, m + 1))
    z[:, 0] = theta[0]
    for j in range(m):
        z[:, j + 1] = theta[1 + 2 * j] - theta[2 + 2 * j] * log_x[:, j]
    zmax = z.max(axis=1)
    w = np.exp(z - zmax[:, None])
    s = w.sum(axis=1)
    r = zmax + np.log(s) - log_y
    w /= s[:, None]
    a = np.abs(r)
    f = float(np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)).sum())
    pw = np.clip(r, -delta, delta)[:, None] * w
    g = np.empty(len(theta))
    g[0] = pw[:, 0].sum()
    for j in range(m):
        g[1 + 2 * j] = pw[:, j + 1].sum()
        g[2 + 2 * j] = -(pw[:, j + 1] * log_x[:, j]).sum()
    return f, g


def log_predict(theta: np.ndarray, log_x: np.ndarray) -> np.ndarray:
    """log L at each point: LSE(e, c_j - k_j log x_j)."""
    return logsumexp(stack_terms(theta, log_x), axis=1)


def stack_terms(theta: np.ndarray, log_x: np.ndarray) -> np.ndarray:
    """(n, m + 1) log of each additive term: [e, c_1 - k_1 log x_1, ...]."""
    cols = [np.full(len(log_x), theta[0])]
    for j in range(log_x.shape[1]):
        cols.append(theta[1 + 2 * j] - theta[2 + 2 * j] * log_x[:, j])
    return np.stack(cols, axis=1)


def numerical_hessian(
    theta: np.ndarray, log_x: np.ndarray, log_y: np.ndarray, delta: float, step: float = 1e-6
) -> np.ndarray:
    """Hessian of the summed Huber objective at theta: central differences of the analytic gradient.

    The Huber loss has no second derivative at |r| = delta; with a step of 1e-6 in log space only residuals
    within ~1e-6 of delta straddle the kink, so the estimate is the curvature of the quadratic-region points
    plus a negligible error. Symmetrised.
    """
    theta = np.asarray(theta, dtype=float)
    k = len(theta)
    H = np.empty((k, k))
    for i in range(k):
        e = np.zeros(k)
        e[i] = step
        H[:, i] = (
            huber_objective(theta + e, log_x, log_y, delta)[1]
            - huber_objective(theta - e, log_x, log_y, delta)[1]
        ) / (2 * step)
    return 0.5 * (H + H.T)


def screen(thetas: np.ndarray, log_x: np.ndarray, log_y: np.ndarray, delta: float) -> np.ndarray:
    """Objective at many start points at once (vectorised, chunked to bound memory)."""
    m = log_x.shape[1]
    out = np.empty(len(thetas))
    chunk = max(1, 2_000_000 // max(1, len(log_y) * (m + 1)))
    for i in range(0, len(thetas), chunk):
        th = thetas[i : i + chunk]
        z = [np.broadcast_to(th[:, [0]], (len(th), len(log_y)))]
        for j in range(m):
            z.append(th[:, [1 + 2 * j]] - th[:, [2 + 2 * j]] * log_x[:, j])
        r = logsumexp(np.stack(z, axis=-1), axis=-1) - log_y
        a = np.abs(r)
        out[i : i + chunk] = np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)).sum(axis=1)
    return out


# ---------------------------------------------------------------------------------------------------------
# bounds and starts


def bounds(m: int) -> list[tuple[float, float]]:
    """L-BFGS-B bounds for a law with m power-law terms."""
    return [E_BOUNDS] + [COEF_BOUNDS, EXP_BOUNDS] * m


def on_bound(theta: np.ndarray) -> np.ndarray:
    """Boolean mask: which parameters sit on (within BOUND_TOL of) an optimiser bound."""
    lo, hi = np.array(bounds((len(theta) - 1) // 2)).T
    theta = np.asarray(theta, dtype=float)
    return (theta <= lo + BOUND_TOL) | (theta >= hi - BOUND_TOL)


def epoch_grid(m: int) -> np.ndarray:
    """Besiroglu et al.'s grid: e in {-1..1}/0.5, coefs in {0..25}/5, exponents in {0..2}/0.5."""
    es = np.arange(-1.0, 1.01, 0.5)
    cs = np.arange(0.0, 25.01, 5.0)
    ks = np.arange(0.0, 2.01, 0.5)
    axes = [es] + [cs, ks] * m
    return np.array(list(itertools.product(*axes)), dtype=float)


def varpro_starts(log_x: np.ndarray, log_y: np.ndarray, n_grid: int) -> np.ndarray:
    """Variable projection: for each exponent combination solve E, coefs >= 0 by weighted NNLS."""
    m = log_x.shape[1]
    y = np.exp(log_y)
    ks = np.linspace(0.05, 2.0, n_grid)
    starts = []
    floor = 1e-8 * float(np.max(y))
    for combo in itertools.product(ks, repeat=m):
        cols = [np.ones_like(y)] + [np.exp(-k * log_x[:, j]) for j, k in enumerate(combo)]
        X = np.stack(cols, axis=1) / y[:, None]  # weights 1/y make residuals relative, like log residuals
        scale = np.maximum(X.max(axis=0), 1e-300)
        coef, _ = nnls(X / scale, np.ones_like(y), maxiter=50 * X.shape[1])
        coef = np.maximum(coef / scale, floor)
        theta = [np.log(coef[0])]
        for j, k in enumerate(combo):
            theta += [np.log(coef[1 + j]), k]
        starts.append(theta)
    th = np.array(starts)
    lo, hi = np.array(bounds(m)).T
    return np.clip(th, lo, hi)


# ---------------------------------------------------------------------------------------------------------
# minimisation


def minimize_from(
    theta0: ArrayLike, log_x: np.ndarray, log_y: np.ndarray, delta: float, options: dict
) -> OptimizeResult:
    """One bounded L-BFGS-B run from theta0 (clipped into the bounds); scipy's OptimizeResult."""
    lo, hi = np.array(bounds(log_x.shape[1])).T
    x0 = np.clip(np.asarray(theta0, dtype=float), lo, hi)
    return minimize(
        huber_objective,
        x0,
        args=(log_x, log_y, delta),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds(log_x.shape[1]),
        options=options,
    )


@dataclass
class Optimum:
    """The best of a multi-start minimisation."""

    theta: np.ndarray
    objective: float
    converged: bool
    message: str
    grad_norm: float  # max |projected gradient|
    n_starts: int
    n_at_best: int  # starts that reached the best objective (to 1e-6 relative)


def fit_log(
    log_x: np.ndarray,
    log_y: np.ndarray,
    delta: float,
    starts: ArrayLike | None = None,
    n_keep: int = 8,
    options: dict | None = None,
) -> Optimum:
    """Multi-start L-BFGS-B: screen candidate starts vectorised, minimise from the best few of each family.

    starts: None (the best n_keep of Epoch's grid and of the variable-projection grid) or explicit starts.
    options: None (TIGHT) or scipy's L-BFGS-B options ({} = scipy's defaults).
    """
    options = dict(TIGHT if options is None else options)
    m = log_x.shape[1]
    if starts is None:
        families = [epoch_grid(m), varpro_starts(log_x, log_y, 20 if m == 2 else 40)]
        chosen = []
        for fam in families:
            f = screen(fam, log_x, log_y, delta)
            f = np.where(np.isfinite(f), f, np.inf)
            chosen.append(fam[np.argsort(f, kind="stable")[:n_keep]])
        starts = np.concatenate(chosen)
    starts = np.atleast_2d(np.asarray(starts, dtype=float))
    results = [minimize_from(s, log_x, log_y, delta, options) for s in starts]
    funs = np.array([r.fun if np.isfinite(r.fun) else np.inf for r in results])
    best = results[int(np.argmin(funs))]
    n_at_best = int(np.sum(funs <= best.fun * (1 + 1e-6) + 1e-15))
    lo, hi = np.array(bounds(m)).T
    g = np.asarray(best.jac)
    # projected gradient: components pushing out of an active bound do not count
    g = np.where((best.x <= lo + 1e-9) & (g > 0), 0.0, g)
    g = np.where((best.x >= hi - 1e-9) & (g < 0), 0.0, g)
    return Optimum(
        theta=np.asarray(best.x),
        objective=float(best.fun),
        converged=bool(best.success),
        message=str(best.message),
        grad_norm=float(np.max(np.abs(g))),
        n_starts=len(starts),
        n_at_best=n_at_best,
    )
