"""Scaling-law fits with uncertainty: approach 3 (parametric), approach 2 (IsoFLOP), per-tier data curves.

Usage (library; the CLI is analysis/fit_laws.py):
    from analysis.laws import fit_parametric, fit_isoflop, fit_data_curve
    fit = fit_parametric(N, D, loss)             # L(N, D) = E + A/N^alpha + B/D^beta, bootstrap CIs
    fit.to_json()["a_opt"], fit.tokens_per_param(1e21)

Approach 3 follows Hoffmann et al. 2022 as corrected by Besiroglu et al. 2024 (arXiv 2404.10102): the law is
fitted in log space as LSE(a - alpha log N, b - beta log D, e) with A = e^a, B = e^b, E = e^e, minimising the
SUM (not the mean) of Huber_delta(log L_pred - log L_obs) with L-BFGS-B from many starts. Two measured facts
(../shared/reference/scaling-laws.md section 1, reproduced in tests/test_analysis_laws.py):
  * with scipy's default stopping rule (relative reduction of f below ~2e-9 of max(|f|, 1)) a start at
    Hoffmann's values stops at once, because the objective is ~1e-3; we use tight tolerances (_TIGHT);
  * some starts end in real local minima (objective ~1e-2 on Chinchilla), so we screen a grid of starts
    vectorised and run L-BFGS-B from the best few of two families (Epoch's grid and a variable-projection
    grid: non-negative least squares for E, A, B at fixed exponents).
Bootstrap: resample points with replacement (whole runs when run ids are given and a run contributes several
points, since successive evals of one run are correlated), refit each from the full-data optimum, percentile
CIs.

Compute-optimal allocation assumes C = kappa * N * D (kappa = 6 for tokens; for samples, kappa is the
median of C / (N D) in the data): G = (alpha A / (beta B))^(1/(alpha+beta)), N* = G (C/kappa)^a,
D* = (C/kappa)^b / G, a = beta/(alpha+beta), b = alpha/(alpha+beta).

Diagnostics are warning strings, never silent numbers: too few points or sizes, a term whose contribution
over the data is below the noise (its parameters are then "not identified"), a larger model with higher
loss at equal D, mixed LR schedules, extrapolation, bootstrap CIs spanning an order of magnitude.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize, nnls
from scipy.special import logsumexp
from scipy.stats import t as student_t

# Tight L-BFGS-B tolerances: the summed Huber objective is ~1e-3, so scipy's default ftol (2.2e-9 relative
# to max(|f|, 1)) stops early; see the module docstring.
_TIGHT = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000, "maxfun": 20000}
# Bounds in log space: [e, (coef, exponent) per term]. Wide enough to be inactive on any sane fit; an
# estimate on a bound is reported as not identified.
_E_BOUNDS = (-20.0, 10.0)
_COEF_BOUNDS = (-50.0, 200.0)
_EXP_BOUNDS = (0.0, 5.0)
# bootstrap refits start at the optimum; one that needs more iterations sits on a flat, unidentified ridge
_BOOT_MAXITER = 500
_PARAM_NAMES = {1: ("E", "B", "beta"), 2: ("E", "A", "alpha", "B", "beta")}


class FitError(ValueError):
    """A fit that cannot be made (too few points, invalid values); the message names the problem."""


# ---------------------------------------------------------------------------------------------------------
# objective


def huber_objective(theta: np.ndarray, log_x: np.ndarray, log_y: np.ndarray, delta: float):
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


def _screen(thetas: np.ndarray, log_x: np.ndarray, log_y: np.ndarray, delta: float) -> np.ndarray:
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


def _bounds(m: int) -> list[tuple[float, float]]:
    return [_E_BOUNDS] + [_COEF_BOUNDS, _EXP_BOUNDS] * m


def _epoch_grid(m: int) -> np.ndarray:
    """Besiroglu et al.'s grid: e in {-1..1}/0.5, coefs in {0..25}/5, exponents in {0..2}/0.5."""
    es = np.arange(-1.0, 1.01, 0.5)
    cs = np.arange(0.0, 25.01, 5.0)
    ks = np.arange(0.0, 2.01, 0.5)
    axes = [es] + [cs, ks] * m
    return np.array(list(itertools.product(*axes)), dtype=float)


def _varpro_starts(log_x: np.ndarray, log_y: np.ndarray, n_grid: int) -> np.ndarray:
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
    lo, hi = np.array(_bounds(m)).T
    return np.clip(th, lo, hi)


def _minimize(theta0, log_x, log_y, delta, options):
    lo, hi = np.array(_bounds(log_x.shape[1])).T
    x0 = np.clip(np.asarray(theta0, dtype=float), lo, hi)
    return minimize(
        huber_objective,
        x0,
        args=(log_x, log_y, delta),
        jac=True,
        method="L-BFGS-B",
        bounds=_bounds(log_x.shape[1]),
        options=options,
    )


@dataclass
class _Optimum:
    theta: np.ndarray
    objective: float
    converged: bool
    message: str
    grad_norm: float
    n_starts: int
    n_at_best: int


def _fit_log(log_x, log_y, delta, starts=None, n_keep=8, options=None) -> _Optimum:
    """Multi-start L-BFGS-B: screen candidate starts vectorised, minimise from the best few of each family."""
    options = dict(_TIGHT if options is None else options)
    m = log_x.shape[1]
    if starts is None:
        families = [_epoch_grid(m), _varpro_starts(log_x, log_y, 20 if m == 2 else 40)]
        chosen = []
        for fam in families:
            f = _screen(fam, log_x, log_y, delta)
            f = np.where(np.isfinite(f), f, np.inf)
            chosen.append(fam[np.argsort(f, kind="stable")[:n_keep]])
        starts = np.concatenate(chosen)
    starts = np.atleast_2d(np.asarray(starts, dtype=float))
    results = [_minimize(s, log_x, log_y, delta, options) for s in starts]
    funs = np.array([r.fun if np.isfinite(r.fun) else np.inf for r in results])
    best = results[int(np.argmin(funs))]
    n_at_best = int(np.sum(funs <= best.fun * (1 + 1e-6) + 1e-15))
    lo, hi = np.array(_bounds(m)).T
    g = np.asarray(best.jac)
    # projected gradient: components pushing out of an active bound do not count
    g = np.where((best.x <= lo + 1e-9) & (g > 0), 0.0, g)
    g = np.where((best.x >= hi - 1e-9) & (g < 0), 0.0, g)
    return _Optimum(
        theta=np.asarray(best.x),
        objective=float(best.fun),
        converged=bool(best.success),
        message=str(best.message),
        grad_norm=float(np.max(np.abs(g))),
        n_starts=len(starts),
        n_at_best=n_at_best,
    )


# ---------------------------------------------------------------------------------------------------------
# results


def theta_to_params(theta: np.ndarray) -> dict[str, float]:
    m = (len(theta) - 1) // 2
    names = _PARAM_NAMES[m]
    out = {"E": float(np.exp(theta[0]))}
    for j in range(m):
        out[names[1 + 2 * j]] = float(np.exp(theta[1 + 2 * j]))
        out[names[2 + 2 * j]] = float(theta[2 + 2 * j])
    return out


def _fmt(x: float) -> str:
    return f"{x:.4g}"


@dataclass
class LawFit:
    """A fitted law: L(N, D) = E + A/N^alpha + B/D^beta (joint) or L(D) = E + B/D^beta (data curve)."""

    theta: np.ndarray
    params: dict[str, float]
    objective: float
    n_points: int
    huber_delta: float
    kappa: float
    ranges: dict[str, tuple[float, float]]
    identified: dict[str, bool]
    ci95: dict[str, tuple[float, float]] = field(default_factory=dict)
    boot: np.ndarray | None = None  # (n_ok, len(theta)) log-space bootstrap estimates
    n_bootstrap: int = 0
    warnings: list[str] = field(default_factory=list)
    converged: bool = True
    grad_norm: float = 0.0
    n_starts: int = 0
    n_at_best: int = 0
    seed: int = 0
    noise: float = 0.0  # robust scale of loss residuals

    @property
    def joint(self) -> bool:
        return "A" in self.params

    def predict(self, N=None, D=None) -> np.ndarray:
        """Predicted loss; N is ignored for a data curve."""
        p = self.params
        D = np.asarray(D, dtype=float)
        out = p["E"] + p["B"] / D ** p["beta"]
        if self.joint:
            out = out + p["A"] / np.asarray(N, dtype=float) ** p["alpha"]
        return out

    # compute-optimal allocation (joint law only)
    @property
    def a_opt(self) -> float:
        return self.params["beta"] / (self.params["alpha"] + self.params["beta"])

    @property
    def b_opt(self) -> float:
        return self.params["alpha"] / (self.params["alpha"] + self.params["beta"])

    def compute_optimal(self, C) -> tuple[np.ndarray, np.ndarray]:
        """(N*, D*) minimising L at compute C = kappa N D."""
        return compute_optimal(self.params, C, self.kappa)

    def tokens_per_param(self, C) -> np.ndarray:
        """D*/N* at compute C (samples per parameter when D counts samples)."""
        n_opt, d_opt = self.compute_optimal(C)
        return d_opt / n_opt

    def extrapolation_warnings(self, C: float) -> list[str]:
        """Warnings for predictions at compute C outside the fitted data."""
        out = []
        c_lo, c_hi = self.ranges.get("C", (np.nan, np.nan))
        if np.isfinite(c_lo) and not (c_lo <= C <= c_hi):
            out.append(f"extrapolation: C={C:.3g} is outside the data (C in [{c_lo:.3g}, {c_hi:.3g}])")
        if self.joint:
            n_opt, d_opt = (float(v) for v in self.compute_optimal(C))
            for name, v in (("N", n_opt), ("D", d_opt)):
                lo, hi = self.ranges[name]
                if np.isfinite(v) and not (lo <= v <= hi):
                    out.append(
                        f"extrapolation: {name}*={v:.3g} at C={C:.3g} is outside the data "
                        f"({name} in [{lo:.3g}, {hi:.3g}])"
                    )
        return out

    def to_json(self, at_compute: float | None = None) -> dict:
        p = self.params
        out: dict = {k: p[k] for k in _PARAM_NAMES[2 if self.joint else 1]}
        out.update(
            objective=self.objective,
            n_points=self.n_points,
            huber_delta=self.huber_delta,
            ci95={k: list(v) for k, v in self.ci95.items()},
            identified=dict(self.identified),
            n_bootstrap=self.n_bootstrap,
            n_bootstrap_ok=0 if self.boot is None else len(self.boot),
            seed=self.seed,
            converged=self.converged,
            grad_norm=self.grad_norm,
            n_starts=self.n_starts,
            n_starts_at_best=self.n_at_best,
            residual_noise=self.noise,
            data_range={k: list(v) for k, v in self.ranges.items()},
        )
        if self.joint:
            out.update(a_opt=self.a_opt, b_opt=self.b_opt, kappa=self.kappa)
            if at_compute is not None:
                n_opt, d_opt = (float(v) for v in self.compute_optimal(at_compute))
                ratio = d_opt / n_opt if n_opt > 0 else float("nan")
                block = {"C": at_compute, "N_opt": n_opt, "D_opt": d_opt, "tokens_per_param": ratio}
                if self.boot is not None and len(self.boot) > 1:
                    ratios = []
                    for t in self.boot:
                        bn, bd = compute_optimal(theta_to_params(t), at_compute, self.kappa)
                        ratios.append(float(bd / bn) if bn > 0 else np.nan)
                    if np.isfinite(ratios).sum() > 1:
                        block["tokens_per_param_ci95"] = list(np.nanpercentile(ratios, [2.5, 97.5]))
                block["extrapolated"] = bool(self.extrapolation_warnings(at_compute))
                out["compute_optimal"] = block
        out["warnings"] = list(self.warnings)
        return out

    def summary(self) -> str:
        parts = []
        for k in _PARAM_NAMES[2 if self.joint else 1]:
            ci = self.ci95.get(k)
            s = f"{k}={_fmt(self.params[k])}"
            if ci:
                s += f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"
            if not self.identified.get(k, True):
                s += " (not identified)"
            parts.append(s)
        return ", ".join(parts)


def compute_optimal(params: dict[str, float], C, kappa: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """(N*, D*) for L = E + A/N^alpha + B/D^beta under C = kappa N D (Hoffmann et al. 2022, eq. 4)."""
    A, B, al, be = params["A"], params["B"], params["alpha"], params["beta"]
    x = np.asarray(C, dtype=float) / kappa
    if not (al > 0 and be > 0 and A > 0 and B > 0):  # a flat term: no interior optimum
        return np.full(x.shape, np.nan), np.full(x.shape, np.nan)
    G = (al * A / (be * B)) ** (1.0 / (al + be))
    return G * x ** (be / (al + be)), x ** (al / (al + be)) / G


# ---------------------------------------------------------------------------------------------------------
# diagnostics


def _check_inputs(arrays: dict[str, np.ndarray], n_min: int) -> int:
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


def schedule_warnings(schedules) -> list[str]:
    """Warn when one fit mixes LR schedules (their intermediate points are not comparable)."""
    if schedules is None:
        return []
    s = np.asarray([str(x) for x in schedules if x is not None and str(x) not in ("", "nan", "None")])
    if len(s) == 0:
        return []
    names, counts = np.unique(s, return_counts=True)
    if len(names) < 2:
        return []
    mix = ", ".join(f"{n} ({c} points)" for n, c in zip(names, counts, strict=True))
    return [f"mixed LR schedules in one fit: {mix}; losses under different schedules are not comparable"]


def larger_model_worse(
    N, D, loss, groups=None, *, noise: float = 0.0, min_ratio: float = 1.2, tol: float = 0.01
) -> list[str]:
    """Warn where a larger model has a higher loss than a smaller one at equal D.

    Each group (a run; by default all points of one N) is a curve of loss over log D. For every pair of
    groups whose N differ by at least `min_ratio` and whose D ranges overlap, both curves are interpolated
    at the points in the overlap; a median excess above max(tol * median loss, 2 * noise * sqrt(2 / k))
    (k points in the overlap, noise = residual scale of a fit) is reported.
    """
    N, D, loss = (np.asarray(v, dtype=float) for v in (N, D, loss))
    keys = np.asarray(groups) if groups is not None else N
    if groups is not None and np.unique(keys, return_counts=True)[1].max() < 2:
        keys, groups = N, None  # one point per run (final rows): each size's points form its curve
    curves = []
    for g in np.unique(keys):
        sel = keys == g
        if sel.sum() < 2:
            continue
        order = np.argsort(D[sel])
        curves.append((float(np.median(N[sel])), str(g), np.log(D[sel][order]), loss[sel][order]))
    thresh = tol * float(np.median(loss))
    found = []
    for (n1, g1, x1, y1), (n2, g2, x2, y2) in itertools.permutations(curves, 2):
        if n2 < n1 * min_ratio:
            continue
        lo, hi = max(x1[0], x2[0]), min(x1[-1], x2[-1])
        if hi <= lo:
            continue
        xs = np.concatenate([x1, x2])
        xs = xs[(xs >= lo) & (xs <= hi)]
        diff = np.interp(xs, x2, y2) - np.interp(xs, x1, y1)
        excess = float(np.median(diff))
        if excess > max(thresh, 2.0 * noise * np.sqrt(2.0 / len(xs))):
            found.append((excess, n1, g1, n2, g2, float(np.exp(lo)), float(np.exp(hi))))
    if not found:
        return []
    found.sort(reverse=True)
    pairs = "; ".join(
        f"N={n2:.3g}"
        + (f" ({g2})" if groups is not None else "")
        + f" vs N={n1:.3g}"
        + (f" ({g1})" if groups is not None else "")
        + f": +{e:.3g} over D in [{lo:.3g}, {hi:.3g}]"
        for e, n1, g1, n2, g2, lo, hi in found[:3]
    )
    more = f" (and {len(found) - 3} more pairs)" if len(found) > 3 else ""
    return [f"larger model with higher loss at equal D (median excess): {pairs}{more}"]


def _identification(theta, log_x, loss, pred, n_distinct, boot_params) -> tuple[dict, list, float]:
    """Which parameters the data determine, and why not where they do not."""
    m = log_x.shape[1]
    names = _PARAM_NAMES[m]
    resid = loss - pred
    noise = float(1.4826 * np.median(np.abs(resid - np.median(resid))))
    noise = max(noise, float(np.sqrt(np.mean(resid**2))) * 0.1, 1e-12)
    identified = dict.fromkeys(names, True)
    warnings = []
    bounds = _bounds(m)
    for i, (lo, hi) in enumerate(bounds):
        if theta[i] <= lo + 1e-6 or theta[i] >= hi - 1e-6:
            identified[names[i]] = False
            if i > 0:  # a term's coefficient or exponent on a bound: the whole term is undetermined
                pair = (i - 1) // 2
                identified[names[1 + 2 * pair]] = identified[names[2 + 2 * pair]] = False
            warnings.append(f"{names[i]} is on its optimiser bound: not identified")
    for j in range(m):
        cn, kn = names[1 + 2 * j], names[2 + 2 * j]
        var = "N" if (m == 2 and j == 0) else "D"
        term = np.exp(theta[1 + 2 * j] - theta[2 + 2 * j] * log_x[:, j])
        spread = float(term.max() - term.min())
        if n_distinct[j] < 3:
            identified[cn] = identified[kn] = False
            warnings.append(
                f"only {n_distinct[j]} distinct {var} values: {cn}/{var}^{kn} cannot be identified (need >= 3)"
            )
        elif spread < noise:
            identified[cn] = identified[kn] = False
            warnings.append(
                f"the {cn}/{var}^{kn} term varies by {spread:.3g} over the data, below the residual noise "
                f"{noise:.3g}: {cn} and {kn} are not identified"
            )
        if not identified[kn] and float(np.mean(term)) > noise and identified["E"]:
            # a flat term of non-negligible size is indistinguishable from a shift of E
            identified["E"] = False
            warnings.append(
                f"E is confounded with the nearly constant {cn}/{var}^{kn} term (mean {np.mean(term):.3g}): "
                f"only their sum is determined"
            )
    if boot_params is not None:
        for i, k in enumerate(names):
            col = boot_params[k]
            lo, hi = np.percentile(col, [2.5, 97.5])
            est = float(np.exp(theta[i]) if k in ("E", "A", "B") else theta[i])
            if lo > 0 and hi / lo >= 10:
                warnings.append(
                    f"the 95% CI of {k} spans {np.log10(hi / lo):.1f} orders of magnitude "
                    f"[{_fmt(lo)}, {_fmt(hi)}]"
                )
                if hi / lo >= 100:
                    identified[k] = False
            elif lo <= 1e-9 and k in ("alpha", "beta"):
                if identified[k]:
                    warnings.append(f"the 95% CI of {k} reaches 0: the exponent is not determined")
                identified[k] = False
            elif est > 0 and np.std(col) / est > 0.5:
                # the replication note's rule: flag a relative SE above 50% (B on Chinchilla is ~60%)
                warnings.append(
                    f"{k} is poorly determined: bootstrap relative SE {100 * np.std(col) / est:.0f}%"
                )
    return identified, warnings, noise


# ---------------------------------------------------------------------------------------------------------
# approach 3 and data curves


def _fit_law(
    log_x: np.ndarray,
    loss: np.ndarray,
    *,
    huber_delta: float,
    n_bootstrap: int,
    seed: int,
    starts,
    lbfgs_options,
    kappa: float,
    ranges: dict,
    clusters=None,
) -> LawFit:
    m = log_x.shape[1]
    names = _PARAM_NAMES[m]
    n = len(loss)
    log_y = np.log(loss)
    opt = _fit_log(log_x, log_y, huber_delta, starts=starts, options=lbfgs_options)
    theta = opt.theta
    warnings: list[str] = []
    if not opt.converged and opt.grad_norm > 1e-6:  # "ABNORMAL" line searches at an exact optimum are fine
        warnings.append(f"L-BFGS-B did not report convergence: {opt.message}")
    if n < 4 * len(theta):
        warnings.append(f"too few points: {n} for {len(theta)} parameters (want >= {4 * len(theta)})")
    boot = None
    ci95: dict[str, tuple[float, float]] = {}
    boot_params = None
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        ests, degenerate, capped = [], 0, 0
        options = dict(_TIGHT if lbfgs_options is None else lbfgs_options)
        options["maxiter"] = min(options.get("maxiter", 15000), _BOOT_MAXITER)
        members = None
        if clusters is not None:
            _, inverse = np.unique(np.asarray(clusters).astype(str), return_inverse=True)
            members = [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)]
            warnings.append(f"bootstrap resamples whole runs ({len(members)} clusters), not single points")
        for _ in range(n_bootstrap):
            if members is None:
                idx = rng.integers(0, n, n)
            else:
                idx = np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])
            if len(np.unique(idx)) <= len(theta):  # interpolates the resample exactly: no information
                degenerate += 1
                continue
            r = _minimize(theta, log_x[idx], log_y[idx], huber_delta, options)
            capped += r.nit >= options["maxiter"]
            if np.all(np.isfinite(r.x)) and np.isfinite(r.fun):
                ests.append(r.x)
        boot = np.array(ests).reshape(-1, len(theta))
        if degenerate:
            warnings.append(
                f"{degenerate} of {n_bootstrap} bootstrap resamples had <= {len(theta)} distinct points (skipped)"
            )
        if capped:
            warnings.append(
                f"{capped} bootstrap refits stopped at {options['maxiter']} iterations (a flat, poorly determined "
                "direction of the objective)"
            )
        if len(boot) < n_bootstrap - degenerate:
            warnings.append(f"{n_bootstrap - degenerate - len(boot)} bootstrap refits failed (dropped)")
        if len(boot) < 0.5 * n_bootstrap:
            warnings.append("too few usable bootstrap resamples: no CIs")
            boot = None
        if boot is not None and len(boot) > 1:
            boot_params = {k: np.array([theta_to_params(t)[k] for t in boot]) for k in names}
            if m == 2:
                boot_params["a_opt"] = boot_params["beta"] / (boot_params["alpha"] + boot_params["beta"])
                boot_params["b_opt"] = boot_params["alpha"] / (boot_params["alpha"] + boot_params["beta"])
            ci95 = {k: tuple(float(v) for v in np.percentile(c, [2.5, 97.5])) for k, c in boot_params.items()}
    pred = np.exp(logsumexp(_stack_terms(theta, log_x), axis=1))
    n_distinct = [len(np.unique(np.round(log_x[:, j], 9))) for j in range(m)]
    identified, id_warn, noise = _identification(
        theta, log_x, loss, pred, n_distinct, {k: boot_params[k] for k in names} if boot_params else None
    )
    return LawFit(
        theta=theta,
        params=theta_to_params(theta),
        objective=opt.objective,
        n_points=n,
        huber_delta=huber_delta,
        kappa=kappa,
        ranges=ranges,
        identified=identified,
        ci95=ci95,
        boot=boot,
        n_bootstrap=n_bootstrap,
        warnings=warnings + id_warn,
        converged=opt.converged,
        grad_norm=opt.grad_norm,
        n_starts=opt.n_starts,
        n_at_best=opt.n_at_best,
        seed=seed,
        noise=noise,
    )


def _stack_terms(theta, log_x):
    cols = [np.full(len(log_x), theta[0])]
    for j in range(log_x.shape[1]):
        cols.append(theta[1 + 2 * j] - theta[2 + 2 * j] * log_x[:, j])
    return np.stack(cols, axis=1)


def fit_parametric(
    N,
    D,
    loss,
    *,
    huber_delta: float = 1e-3,
    n_bootstrap: int = 1000,
    seed: int = 0,
    starts=None,
    lbfgs_options: dict | None = None,
    kappa: float = 6.0,
    C=None,
    schedules=None,
    groups=None,
    at_compute: float | None = None,
) -> LawFit:
    """Approach 3: fit L(N, D) = E + A/N^alpha + B/D^beta with bootstrap percentile CIs.

    starts: None (multi-start grid) or an array of log-space starts [e, a, alpha, b, beta].
    lbfgs_options: None (tight tolerances) or scipy's L-BFGS-B options ({} = scipy's defaults).
    C: compute per point (default kappa N D), used for the data range and extrapolation checks.
    schedules / groups: per-point LR schedule names and run ids, for the diagnostics; with run ids and several
        points per run the bootstrap resamples runs (a cluster bootstrap).
    at_compute: compute at which to check the compute-optimal allocation for extrapolation.
    """
    N, D, loss = (np.asarray(v, dtype=float).ravel() for v in (N, D, loss))
    _check_inputs({"N": N, "D": D, "loss": loss}, n_min=6)
    C = kappa * N * D if C is None else np.asarray(C, dtype=float).ravel()
    ranges = {k: (float(v.min()), float(v.max())) for k, v in (("N", N), ("D", D), ("C", C))}
    clusters = None
    if groups is not None:
        _, counts = np.unique(np.asarray(groups).astype(str), return_counts=True)
        if counts.max() > 1:  # several evals per run are correlated: resample runs, not points
            clusters = groups
    fit = _fit_law(
        np.log(np.stack([N, D], axis=1)),
        loss,
        huber_delta=huber_delta,
        n_bootstrap=n_bootstrap,
        seed=seed,
        starts=starts,
        lbfgs_options=lbfgs_options,
        kappa=kappa,
        ranges=ranges,
        clusters=clusters,
    )
    if not (fit.identified["alpha"] and fit.identified["beta"]):
        fit.warnings.append("a_opt and b_opt derive from an exponent that is not identified: not meaningful")
    fit.warnings += schedule_warnings(schedules)
    fit.warnings += larger_model_worse(N, D, loss, groups=groups, noise=fit.noise)
    if at_compute is not None:
        fit.warnings += fit.extrapolation_warnings(at_compute)
    return fit


def fit_data_curve(
    D,
    loss,
    *,
    huber_delta: float = 1e-3,
    n_bootstrap: int = 200,
    seed: int = 0,
    schedules=None,
    intermediate: bool = True,
) -> LawFit:
    """Per-tier data curve L(D) = E + B/D^beta, e.g. from the intermediate evals of one run.

    Bootstrap CIs treat the points as independent; successive evals of one run are not, so the CIs are
    optimistic (stated in the warnings).
    """
    D, loss = (np.asarray(v, dtype=float).ravel() for v in (D, loss))
    _check_inputs({"D": D, "loss": loss}, n_min=4)
    fit = _fit_law(
        np.log(D)[:, None],
        loss,
        huber_delta=huber_delta,
        n_bootstrap=n_bootstrap,
        seed=seed,
        starts=None,
        lbfgs_options=None,
        kappa=np.nan,
        ranges={"D": (float(D.min()), float(D.max()))},
    )
    fit.warnings += schedule_warnings(schedules)
    if intermediate and schedules is not None:
        names = {str(s) for s in schedules if s is not None}
        if names & {"cosine", "linear", "wsd"}:
            fit.warnings.append(
                "intermediate evals of a decaying LR schedule ("
                + ", ".join(sorted(names))
                + "): points before "
                "the end of the decay are not valid scaling points and inflate beta"
            )
    if intermediate and n_bootstrap > 0:
        fit.warnings.append("CIs treat successive evals of one run as independent: optimistic")
    return fit


# ---------------------------------------------------------------------------------------------------------
# approach 2 (IsoFLOP)


@dataclass
class IsoFlopFit:
    """Approach 2: per-budget parabola optima and power laws N* = kN C^a, D* = kD C^b."""

    budgets: list[dict]
    a: float | None
    b: float | None
    log_kN: float | None
    log_kD: float | None
    ci95: dict[str, tuple[float, float]]
    ci95_ols: dict[str, tuple[float, float]]
    n_bootstrap: int
    n_bootstrap_ok: int
    warnings: list[str]
    boot: np.ndarray | None = None  # (n_ok, 4): a, log_kN, b, log_kD

    @property
    def n_budgets(self) -> int:
        return sum(1 for b in self.budgets if b["status"] == "ok")

    def n_opt(self, C) -> np.ndarray:
        return np.exp(self.log_kN) * np.asarray(C, dtype=float) ** self.a

    def d_opt(self, C) -> np.ndarray:
        return np.exp(self.log_kD) * np.asarray(C, dtype=float) ** self.b

    def band(self, C, which: str = "N") -> tuple[np.ndarray, np.ndarray]:
        """Pointwise 95% band of N*(C) or D*(C) from the bootstrap."""
        C = np.asarray(C, dtype=float)
        if self.boot is None or len(self.boot) < 2:
            v = self.n_opt(C) if which == "N" else self.d_opt(C)
            return v, v
        k, s = (1, 0) if which == "N" else (3, 2)
        curves = np.exp(self.boot[:, [k]]) * C[None, :] ** self.boot[:, [s]]
        return np.percentile(curves, 2.5, axis=0), np.percentile(curves, 97.5, axis=0)

    def to_json(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "ci95": {k: list(v) for k, v in self.ci95.items()},
            "ci95_ols": {k: list(v) for k, v in self.ci95_ols.items()},
            "n_budgets": self.n_budgets,
            "log_kN": self.log_kN,
            "log_kD": self.log_kD,
            "n_bootstrap": self.n_bootstrap,
            "n_bootstrap_ok": self.n_bootstrap_ok,
            "budgets": self.budgets,
            "warnings": list(self.warnings),
        }


def _budget_optimum(logN, logD, loss) -> tuple[str, float, float, float, tuple]:
    """Vertex of a parabola of loss in log N. Returns (status, logN*, logD*, loss*, coefficients)."""
    sizes = np.unique(np.round(logN, 9))
    if len(sizes) < 3:
        return f"refused: {len(sizes)} distinct sizes (need >= 3)", np.nan, np.nan, np.nan, ()
    p2, p1, p0 = np.polyfit(logN, loss, 2)
    if p2 <= 0:
        return "refused: the parabola has no minimum (opens downward)", np.nan, np.nan, np.nan, (p2, p1, p0)
    x = -p1 / (2 * p2)
    if not (logN.min() <= x <= logN.max()):
        side = "smallest" if x < logN.min() else "largest"
        return (
            f"refused: minimum at N={np.exp(x):.3g} lies beyond the {side} sampled size "
            f"[{np.exp(logN.min()):.3g}, {np.exp(logN.max()):.3g}]",
            np.nan,
            np.nan,
            np.nan,
            (p2, p1, p0),
        )
    q1, q0 = np.polyfit(logN, logD, 1)  # D along the budget: exact when C = kappa N D
    return "ok", float(x), float(q1 * x + q0), float(p0 + p1 * x + p2 * x * x), (p2, p1, p0)


def fit_isoflop(
    N, D, loss, budget, *, C=None, n_bootstrap: int = 1000, seed: int = 0, schedules=None
) -> IsoFlopFit:
    """Approach 2 on points grouped by compute budget.

    Per budget: a parabola of loss in ln N (>= 3 sizes and a minimum inside the sampled range, else that
    budget is refused with the reason), D* from the budget's own ln D vs ln N line. Then least squares
    ln N* = a ln C + ln kN and ln D* = b ln C + ln kD over the budgets. CIs: percentile bootstrap
    resampling points within each budget (ci95), and t intervals of the slope with >= 3 budgets (ci95_ols).
    C per budget: the budget value when numeric, else the median compute of its points.
    """
    N, D, loss = (np.asarray(v, dtype=float).ravel() for v in (N, D, loss))
    _check_inputs({"N": N, "D": D, "loss": loss}, n_min=3)
    budget = np.asarray(budget).ravel()
    C = N * D * 6.0 if C is None else np.asarray(C, dtype=float).ravel()
    logN, logD = np.log(N), np.log(D)
    groups = []
    for bv in _unique_in_order(budget):
        sel = np.flatnonzero(budget == bv)
        try:
            c_val = float(bv)
        except (TypeError, ValueError):
            c_val = float(np.median(C[sel]))
        groups.append((bv, c_val, sel))
    groups.sort(key=lambda g: g[1])
    warnings = []
    rows = []
    for _bv, c_val, sel in groups:
        status, x, y, lopt, _ = _budget_optimum(logN[sel], logD[sel], loss[sel])
        row = {
            "budget": c_val,
            "n_points": int(len(sel)),
            "n_sizes": int(len(np.unique(N[sel]))),
            "status": status,
        }
        if status == "ok":
            row.update(N_opt=float(np.exp(x)), D_opt=float(np.exp(y)), loss_opt=lopt)
            span = logN[sel].max() - logN[sel].min()
            if min(x - logN[sel].min(), logN[sel].max() - x) < 0.1 * span:
                warnings.append(
                    f"budget {c_val:.3g}: minimum near the edge of the sampled sizes (biased vertex)"
                )
        else:
            warnings.append(f"budget {c_val:.3g}: {status}")
        rows.append(row)
    ok = [(g, r) for g, r in zip(groups, rows, strict=True) if r["status"] == "ok"]
    warnings += schedule_warnings(schedules)
    empty = IsoFlopFit(rows, None, None, None, None, {}, {}, n_bootstrap, 0, warnings)
    if len(ok) < 2:
        warnings.append(f"approach 2 needs >= 2 budgets with a valid minimum, got {len(ok)}: no exponents")
        return empty
    if len(ok) < 3:
        warnings.append("only 2 budgets: the power law N*(C) has no degrees of freedom left to check it")
    lc = np.log([g[1] for g, _ in ok])
    ln = np.log([r["N_opt"] for _, r in ok])
    ld = np.log([r["D_opt"] for _, r in ok])
    a, log_kn = np.polyfit(lc, ln, 1)
    b, log_kd = np.polyfit(lc, ld, 1)
    ci_ols = {}
    if len(ok) >= 3:
        for name, yv, slope, icpt in (("a", ln, a, log_kn), ("b", ld, b, log_kd)):
            res = yv - (slope * lc + icpt)
            dof = len(lc) - 2
            se = np.sqrt(np.sum(res**2) / dof / np.sum((lc - lc.mean()) ** 2))
            q = student_t.ppf(0.975, dof)
            ci_ols[name] = (float(slope - q * se), float(slope + q * se))
    boot_rows = []
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        ok_groups = [g for g, _ in ok]
        for _ in range(n_bootstrap):
            xs, ns, ds = [], [], []
            for _bv, c_val, sel in ok_groups:
                idx = sel[rng.integers(0, len(sel), len(sel))]
                status, x, y, _, _ = _budget_optimum(logN[idx], logD[idx], loss[idx])
                if status == "ok":
                    xs.append(np.log(c_val))
                    ns.append(x)
                    ds.append(y)
            if len(xs) >= 2:
                sa, ia = np.polyfit(xs, ns, 1)
                sb, ib = np.polyfit(xs, ds, 1)
                boot_rows.append((sa, ia, sb, ib))
    boot = np.array(boot_rows).reshape(-1, 4)
    ci = {}
    if len(boot) > 1:
        ci = {
            "a": tuple(float(v) for v in np.percentile(boot[:, 0], [2.5, 97.5])),
            "b": tuple(float(v) for v in np.percentile(boot[:, 2], [2.5, 97.5])),
        }
        if len(boot) < 0.9 * n_bootstrap:
            warnings.append(
                f"only {len(boot)} of {n_bootstrap} bootstrap resamples had >= 2 valid budgets: CIs are conditional"
            )
    for name, lo_hi in ci.items():
        if lo_hi[1] - lo_hi[0] > 0.5:
            warnings.append(f"the 95% CI of {name} is wider than 0.5: [{lo_hi[0]:.3g}, {lo_hi[1]:.3g}]")
    return IsoFlopFit(
        budgets=rows,
        a=float(a),
        b=float(b),
        log_kN=float(log_kn),
        log_kD=float(log_kd),
        ci95=ci,
        ci95_ols=ci_ols,
        n_bootstrap=n_bootstrap,
        n_bootstrap_ok=len(boot),
        warnings=warnings,
        boot=boot if len(boot) else None,
    )


def _unique_in_order(values) -> list:
    seen, out = set(), []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out
