"""Scaling laws with uncertainty: approach 3 (parametric L(N, D)) and per-tier data curves L(D).

Usage (library; the CLI is analysis/fit_laws.py):
    from analysis.laws import fit_parametric, fit_data_curve
    fit = fit_parametric(N, D, loss)             # L(N, D) = E + A/N^alpha + B/D^beta, bootstrap CIs
    fit.to_json(at_compute=1e21)["a_opt"]         # None (null) with "a_opt_note" when not identified
    fit.derived("a_opt").text()                   # '0.514 [0.49, 0.54]' or 'not identified (why)'
    fit.tokens_per_param(1e21)

Approach 3 follows Hoffmann et al. 2022 (arXiv 2203.15556) as corrected by Besiroglu et al. 2024 (arXiv
2404.10102): the law is fitted in log space as LSE(a - alpha log N, b - beta log D, e) with A = e^a, B = e^b,
E = e^e, minimising the summed Huber loss of log residuals (analysis/fitter.py has the optimiser).
Bootstrap: resample points with replacement (whole runs when run ids are given and a run contributes several
points, since successive evals of one run are correlated), refit each from the full-data optimum, percentile
CIs. Identification, the joint diagnostic and the headline rule are in analysis/diagnostics.py; approach 2
(IsoFLOP parabolas) is analysis/isoflop.py.

Compute-optimal allocation assumes C = kappa * N * D (kappa = 6 for tokens; for samples, kappa is the
median of C / (N D) in the data): G = (alpha A / (beta B))^(1/(alpha+beta)), N* = G (C/kappa)^a,
D* = (C/kappa)^b / G, a = beta/(alpha+beta), b = alpha/(alpha+beta).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from analysis.diagnostics import (
    DERIVED_INPUTS,
    WEAK_CI_WIDTH,
    Derived,
    JointDiagnostic,
    derive,
    identification,
    joint_diagnostic,
    larger_model_worse,
    schedule_warnings,
)
from analysis.fitter import (
    BOOT_MAXITER,
    PARAM_NAMES,
    TIGHT,
    check_inputs,
    fit_log,
    log_predict,
    minimize_from,
)


def theta_to_params(theta: np.ndarray) -> dict[str, float]:
    """Log-space [e, c_1, k_1, ...] -> {"E": ..., "A"/"B": ..., "alpha"/"beta": ...}."""
    m = (len(theta) - 1) // 2
    names = PARAM_NAMES[m]
    out = {"E": float(np.exp(theta[0]))}
    for j in range(m):
        out[names[1 + 2 * j]] = float(np.exp(theta[1 + 2 * j]))
        out[names[2 + 2 * j]] = float(theta[2 + 2 * j])
    return out


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def compute_optimal(
    params: dict[str, float], C: ArrayLike, kappa: float = 6.0
) -> tuple[np.ndarray, np.ndarray]:
    """(N*, D*) for L = E + A/N^alpha + B/D^beta under C = kappa N D (Hoffmann et al. 2022, eq. 4)."""
    A, B, al, be = params["A"], params["B"], params["alpha"], params["beta"]
    x = np.asarray(C, dtype=float) / kappa
    if not (al > 0 and be > 0 and A > 0 and B > 0):  # a flat term: no interior optimum
        return np.full(x.shape, np.nan), np.full(x.shape, np.nan)
    G = (al * A / (be * B)) ** (1.0 / (al + be))
    return G * x ** (be / (al + be)), x ** (al / (al + be)) / G


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
    joint_diagnostic: JointDiagnostic | None = None

    @property
    def joint(self) -> bool:
        return "A" in self.params

    def predict(self, N: ArrayLike | None = None, D: ArrayLike | None = None) -> np.ndarray:
        """Predicted loss; N is ignored for a data curve."""
        p = self.params
        D = np.asarray(D, dtype=float)
        out = p["E"] + p["B"] / D ** p["beta"]
        if self.joint:
            out = out + p["A"] / np.asarray(N, dtype=float) ** p["alpha"]
        return out

    # compute-optimal allocation (joint law only); raw estimates; headlines go through derived()
    @property
    def a_opt(self) -> float:
        return self.params["beta"] / (self.params["alpha"] + self.params["beta"])

    @property
    def b_opt(self) -> float:
        return self.params["alpha"] / (self.params["alpha"] + self.params["beta"])

    def compute_optimal(self, C: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """(N*, D*) minimising L at compute C = kappa N D."""
        return compute_optimal(self.params, C, self.kappa)

    def tokens_per_param(self, C: ArrayLike) -> np.ndarray:
        """D*/N* at compute C (samples per parameter when D counts samples)."""
        n_opt, d_opt = self.compute_optimal(C)
        return d_opt / n_opt

    def tokens_per_param_ci(self, C: float) -> tuple[float, float] | None:
        """95% bootstrap percentile CI of D*/N* at compute C."""
        if self.boot is None or len(self.boot) < 2:
            return None
        ratios = []
        for t in self.boot:
            bn, bd = compute_optimal(theta_to_params(t), C, self.kappa)
            ratios.append(float(bd / bn) if bn > 0 else np.nan)
        if np.isfinite(ratios).sum() < 2:
            return None
        lo, hi = np.nanpercentile(ratios, [2.5, 97.5])
        return float(lo), float(hi)

    def derived(self, name: str, C: float | None = None) -> Derived:
        """A headline number (a_opt, b_opt; N_opt, D_opt, tokens_per_param at compute C) or why it is withheld.

        The rule is analysis/diagnostics.py's: withheld unless every parameter it depends on is identified.
        """
        if not self.joint:
            raise ValueError("derived quantities need the joint law L(N, D)")
        if name in ("a_opt", "b_opt"):
            value = self.a_opt if name == "a_opt" else self.b_opt
            return derive(value, self.ci95.get(name), DERIVED_INPUTS[name], self.identified, WEAK_CI_WIDTH)
        if C is None:
            raise ValueError(f"{name} needs a compute C")
        n_opt, d_opt = (float(v) for v in self.compute_optimal(C))
        if name == "N_opt":
            return derive(n_opt, None, DERIVED_INPUTS[name], self.identified)
        if name == "D_opt":
            return derive(d_opt, None, DERIVED_INPUTS[name], self.identified)
        if name == "tokens_per_param":
            ratio = d_opt / n_opt if n_opt > 0 else float("nan")
            ci = self.tokens_per_param_ci(C) if np.isfinite(ratio) else None
            return derive(ratio, ci, DERIVED_INPUTS[name], self.identified)
        raise ValueError(f"unknown derived quantity {name!r}")

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
        """fits.json's block: parameters, CIs, identification, diagnostics; withheld headlines are null
        with a "<name>_note" giving the reason."""
        p = self.params
        out: dict = {k: p[k] for k in PARAM_NAMES[2 if self.joint else 1]}
        ci95 = {k: list(v) for k, v in self.ci95.items()}
        out.update(
            objective=self.objective,
            n_points=self.n_points,
            huber_delta=self.huber_delta,
            ci95=ci95,
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
        if self.joint_diagnostic is not None:
            out.update(self.joint_diagnostic.to_json())
        if self.joint:
            for name in ("a_opt", "b_opt"):
                d = self.derived(name)
                out[name], out[f"{name}_note"] = d.value, d.note
                if name in ci95:
                    ci95[name] = None if d.suppressed else ci95[name]
            out["kappa"] = self.kappa
            if at_compute is not None:
                block: dict = {"C": at_compute}
                for name in ("N_opt", "D_opt", "tokens_per_param"):
                    d = self.derived(name, at_compute)
                    block[name], block[f"{name}_note"] = d.value, d.note
                    if name == "tokens_per_param":
                        block["tokens_per_param_ci95"] = None if d.ci95 is None else list(d.ci95)
                block["extrapolated"] = bool(self.extrapolation_warnings(at_compute))
                out["compute_optimal"] = block
        out["warnings"] = list(self.warnings)
        return out

    def summary(self) -> str:
        """One line: each parameter with its CI, marked where not identified."""
        parts = []
        for k in PARAM_NAMES[2 if self.joint else 1]:
            ci = self.ci95.get(k)
            s = f"{k}={_fmt(self.params[k])}"
            if ci:
                s += f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"
            if not self.identified.get(k, True):
                s += " (not identified)"
            parts.append(s)
        return ", ".join(parts)


# ---------------------------------------------------------------------------------------------------------
# bootstrap


def bootstrap(
    theta: np.ndarray,
    log_x: np.ndarray,
    log_y: np.ndarray,
    delta: float,
    *,
    n_bootstrap: int,
    seed: int,
    options: dict,
    clusters: ArrayLike | None = None,
) -> tuple[np.ndarray | None, list[str]]:
    """Refit n_bootstrap resamples from theta; returns ((n_ok, len(theta)) estimates or None, warnings).

    A resample draws n points with replacement, or, with clusters (run ids), as many whole clusters as there
    are, with replacement (a cluster bootstrap: successive evals of one run are correlated, so the run is
    the independent unit). Resamples with <= len(theta) distinct points interpolate exactly and are skipped.
    """
    n = len(log_y)
    rng = np.random.default_rng(seed)
    ests, degenerate, capped = [], 0, 0
    warnings: list[str] = []
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
        r = minimize_from(theta, log_x[idx], log_y[idx], delta, options)
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
        return None, warnings
    return boot, warnings


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
    names = PARAM_NAMES[m]
    n = len(loss)
    log_y = np.log(loss)
    opt = fit_log(log_x, log_y, huber_delta, starts=starts, options=lbfgs_options)
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
        options = dict(TIGHT if lbfgs_options is None else lbfgs_options)
        options["maxiter"] = min(options.get("maxiter", 15000), BOOT_MAXITER)
        boot, boot_warn = bootstrap(
            theta,
            log_x,
            log_y,
            huber_delta,
            n_bootstrap=n_bootstrap,
            seed=seed,
            options=options,
            clusters=clusters,
        )
        warnings += boot_warn
        if boot is not None and len(boot) > 1:
            boot_params = {k: np.array([theta_to_params(t)[k] for t in boot]) for k in names}
            if m == 2:
                boot_params["a_opt"] = boot_params["beta"] / (boot_params["alpha"] + boot_params["beta"])
                boot_params["b_opt"] = boot_params["alpha"] / (boot_params["alpha"] + boot_params["beta"])
            ci95 = {k: tuple(float(v) for v in np.percentile(c, [2.5, 97.5])) for k, c in boot_params.items()}
    pred = np.exp(log_predict(theta, log_x))
    n_distinct = [len(np.unique(np.round(log_x[:, j], 9))) for j in range(m)]
    identified, id_warn, noise = identification(
        theta, log_x, loss, pred, n_distinct, {k: boot_params[k] for k in names} if boot_params else None
    )
    jd = joint_diagnostic(theta, log_x, log_y, huber_delta, boot)
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
        warnings=warnings + id_warn + jd.warnings,
        converged=opt.converged,
        grad_norm=opt.grad_norm,
        n_starts=opt.n_starts,
        n_at_best=opt.n_at_best,
        seed=seed,
        noise=noise,
        joint_diagnostic=jd,
    )


def fit_parametric(
    N: ArrayLike,
    D: ArrayLike,
    loss: ArrayLike,
    *,
    huber_delta: float = 1e-3,
    n_bootstrap: int = 1000,
    seed: int = 0,
    starts: ArrayLike | None = None,
    lbfgs_options: dict | None = None,
    kappa: float = 6.0,
    C: ArrayLike | None = None,
    schedules: ArrayLike | None = None,
    groups: ArrayLike | None = None,
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
    check_inputs({"N": N, "D": D, "loss": loss}, n_min=6)
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
    a_opt = fit.derived("a_opt")
    if a_opt.suppressed:
        fit.warnings.append(f"a_opt and b_opt are not reported: {a_opt.why}")
    elif a_opt.status != "ok":
        fit.warnings.append(f"a_opt is {a_opt.status}: {a_opt.why}")
    fit.warnings += schedule_warnings(schedules)
    fit.warnings += larger_model_worse(N, D, loss, groups=groups, noise=fit.noise)
    if at_compute is not None:
        fit.warnings += fit.extrapolation_warnings(at_compute)
    return fit


def fit_data_curve(
    D: ArrayLike,
    loss: ArrayLike,
    *,
    huber_delta: float = 1e-3,
    n_bootstrap: int = 200,
    seed: int = 0,
    schedules: ArrayLike | None = None,
    intermediate: bool = True,
) -> LawFit:
    """Per-tier data curve L(D) = E + B/D^beta, e.g. from the intermediate evals of one run.

    Bootstrap CIs treat the points as independent; successive evals of one run are not, so the CIs are
    optimistic (stated in the warnings).
    """
    D, loss = (np.asarray(v, dtype=float).ravel() for v in (D, loss))
    check_inputs({"D": D, "loss": loss}, n_min=4)
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
