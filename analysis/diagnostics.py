"""Diagnostics of scaling-law fits: which parameters the data determine, and which headlines may be stated.

Usage (library; analysis/laws.py and analysis/isoflop.py call these):
    from analysis.diagnostics import identification, joint_diagnostic, larger_model_worse, derive
    identified, warnings, noise = identification(theta, log_x, loss, pred, n_distinct, boot_params)
    jd = joint_diagnostic(theta, log_x, log_y, delta, boot)     # bootstrap correlations, Hessian condition
    larger_model_worse(N, D, loss, groups=run_ids)               # [warning] or []
    derive(value, ci, ("alpha", "beta"), identified)             # a headline number, or why it is withheld

Diagnostics are warning strings, never silent numbers: too few points or sizes, a term whose contribution
over the data is below the noise (its parameters are then "not identified"), pairs of parameters the data
cannot separate, a nearly singular objective, a larger model with higher loss at equal D, mixed LR schedules,
bootstrap CIs spanning an order of magnitude.

Headline rule (derive / Derived): a number derived from fitted parameters is stated only when every
parameter it depends on is identified; otherwise it is withheld (None in Python, null in fits.json) with the
reason, and printed as "not identified (why)". a = beta/(alpha+beta) and b need alpha and beta; N*, D* and
D*/N* need A, alpha, B and beta. An allocation exponent whose 95% CI is wider than WEAK_CI_WIDTH is still
stated (with its CI) but marked "weakly determined": the CI already says how little it pins down, and
withholding a number that has a CI would hide what the data do say.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from analysis.fitter import PARAM_NAMES, numerical_hessian, on_bound

# Pairs of (centred) log-space parameters whose bootstrap |corr| exceeds this are "not separately
# identified". Measured on Chinchilla (well determined): largest |corr| 0.987-0.990 over 5 bootstrap runs
# (200 or 1000 resamples, seeds 0-2; log A_c vs alpha or log B_c vs beta), so 0.99 would flag it by chance;
# 0.995 does not. Upstream fVLM's dead size term (log A_c vs alpha): 0.9973 (1000 resamples, seed 0) and
# 0.9992 (200, seed 0), but 0.04-0.96 with other seeds: refits start at the optimum, where the gradient along
# an exactly flat direction is zero, so the bootstrap barely explores it. The Hessian condition below is the
# robust check.
CORR_THRESHOLD = 0.995
# Condition number of the Hessian of the summed Huber objective (centred log space, free parameters) above
# which the fit is flagged as nearly singular. Measured: Chinchilla 1.1e4; upstream fVLM 6.8e9. The square
# root of the condition is the ratio of the largest to the smallest standard error over parameter
# combinations: above 1e7 one combination is > 3000x less determined than another.
HESSIAN_COND_THRESHOLD = 1e7
# an allocation exponent (a share in [0, 1]) with a 95% CI wider than this is "weakly determined"
WEAK_CI_WIDTH = 0.5
# larger_model_worse interpolates a curve only between neighbouring points whose D differ by at most this
# factor: a loss curve is convex in log D, so a straight line across a wide gap lies above the curve and
# makes the model look worse than it is (it did on Chinchilla's sparse per-size curves).
MAX_D_GAP = 2.0
# inputs of each derived quantity of the joint law
DERIVED_INPUTS = {
    "a_opt": ("alpha", "beta"),
    "b_opt": ("alpha", "beta"),
    "N_opt": ("A", "alpha", "B", "beta"),
    "D_opt": ("A", "alpha", "B", "beta"),
    "tokens_per_param": ("A", "alpha", "B", "beta"),
}


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def format_ci(ci: tuple[float, float] | list | None, est: float | None = None, fmt: str = "{:.4g}") -> str:
    """'[lo, hi]', or 'n/a' when there is no CI, a bound is not finite, or the estimate itself is NaN."""
    if not ci or len(ci) != 2 or ci[0] is None or ci[1] is None:
        return "n/a"
    lo, hi = float(ci[0]), float(ci[1])
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "n/a"
    if est is not None and not np.isfinite(float(est)):
        return "n/a"
    return f"[{fmt.format(lo)}, {fmt.format(hi)}]"


# ---------------------------------------------------------------------------------------------------------
# headline numbers


@dataclass(frozen=True)
class Derived:
    """A derived headline number: its value and CI, or None with the reason it is withheld."""

    value: float | None
    ci95: tuple[float, float] | None = None
    status: str = "ok"  # ok | weakly determined | not identified | undefined
    why: str = ""

    @property
    def suppressed(self) -> bool:
        return self.value is None

    @property
    def note(self) -> str | None:
        """fits.json's *_note: None when the number stands as it is."""
        return None if self.status == "ok" else f"{self.status}: {self.why}"

    def text(self, fmt: str = "{:.3f}", ci_fmt: str = "{:.4g}") -> str:
        """'0.514 [0.49, 0.54]', '0.4 [0.1, 0.9] (weakly determined: ...)' or 'not identified (why)'."""
        if self.value is None:
            return f"{self.status} ({self.why})"
        s = fmt.format(self.value)
        if self.ci95 is not None:
            s += " " + format_ci(self.ci95, self.value, ci_fmt)
        if self.status != "ok":
            s += f" ({self.status}: {self.why})"
        return s


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def derive(
    value: float | None,
    ci: tuple[float, float] | list | None,
    inputs: tuple[str, ...],
    identified: dict[str, bool],
    weak_width: float | None = None,
) -> Derived:
    """Apply the headline rule (module docstring) to one derived number."""
    missing = [k for k in inputs if not identified.get(k, False)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        return Derived(None, None, "not identified", f"{_join(missing)} {verb} not identified")
    if value is None or not np.isfinite(value):
        return Derived(
            None, None, "undefined", "a term is flat (coefficient or exponent 0): no interior optimum"
        )
    ci = tuple(float(v) for v in ci) if ci is not None and len(ci) == 2 else None
    if ci is not None and not all(np.isfinite(ci)):
        ci = None
    if weak_width is not None and ci is not None and ci[1] - ci[0] > weak_width:
        return Derived(
            float(value),
            ci,
            "weakly determined",
            f"95% CI [{ci[0]:.3g}, {ci[1]:.3g}] wider than {weak_width}",
        )
    return Derived(float(value), ci)


# ---------------------------------------------------------------------------------------------------------
# per-parameter identification


def identification(
    theta: np.ndarray,
    log_x: np.ndarray,
    loss: np.ndarray,
    pred: np.ndarray,
    n_distinct: list[int],
    boot_params: dict[str, np.ndarray] | None,
) -> tuple[dict[str, bool], list[str], float]:
    """Which parameters the data determine, and why not where they do not; also the residual noise.

    A parameter is not identified when it sits on an optimiser bound, when its term has < 3 distinct x
    values or varies less than the residual noise over the data (E is then confounded with that term), or
    when its bootstrap CI spans >= 2 orders of magnitude or reaches 0 (exponents).
    """
    m = log_x.shape[1]
    names = PARAM_NAMES[m]
    resid = loss - pred
    noise = float(1.4826 * np.median(np.abs(resid - np.median(resid))))
    noise = max(noise, float(np.sqrt(np.mean(resid**2))) * 0.1, 1e-12)
    identified = dict.fromkeys(names, True)
    warnings = []
    for i in np.flatnonzero(on_bound(theta)):
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
                # Besiroglu et al.'s reading of their Table: flag a relative SE above 50% (B on Chinchilla ~60%)
                warnings.append(
                    f"{k} is poorly determined: bootstrap relative SE {100 * np.std(col) / est:.0f}%"
                )
    return identified, warnings, noise


# ---------------------------------------------------------------------------------------------------------
# joint identification: bootstrap correlations and the Hessian


def _centring(log_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """M with theta = M @ theta_c, where theta_c's coefficients are the terms' logs at the data's centre.

    log A_c = log A - alpha * mean(log N) is the log of the size term at the geometric-mean N. Uncentred,
    log A and alpha are collinear by construction whenever log N is far from 0 (mean log N ~ 20 on
    Chinchilla: bootstrap corr 0.9993 on a well-determined fit), which says nothing about the data;
    centring removes that and makes the diagnostics independent of the units of N and D.
    """
    m = log_x.shape[1]
    mu = log_x.mean(axis=0)
    M = np.eye(1 + 2 * m)
    for j in range(m):
        M[1 + 2 * j, 2 + 2 * j] = mu[j]
    return M, mu


def _condition(H: np.ndarray) -> tuple[float, float]:
    """(max |eig| / min |eig|, smallest eigenvalue) of a symmetric matrix; NaN when it is all zero."""
    if H.size == 0:
        return float("nan"), float("nan")
    ev = np.linalg.eigvalsh(H)
    big, small = float(np.max(np.abs(ev))), float(np.min(np.abs(ev)))
    if big == 0:
        return float("nan"), float(ev.min())
    return (big / small if small > 0 else float("inf")), float(ev.min())


@dataclass
class JointDiagnostic:
    """Identification of parameter combinations, beyond one parameter at a time."""

    names: tuple[str, ...]  # centred log-space parameters, e.g. ("log E", "log A_c", "alpha", ...)
    centre: dict[str, float]  # mean log x of each variable (the centring point)
    hessian_condition: float  # centred log space, parameters not on a bound
    hessian_condition_uncentred: float
    hessian_min_eig: float
    free: list[str]  # parameters in the Hessian (not on a bound)
    corr_threshold: float = CORR_THRESHOLD
    cond_threshold: float = HESSIAN_COND_THRESHOLD
    corr: np.ndarray | None = None  # bootstrap correlation, centred
    corr_uncentred: np.ndarray | None = None
    flagged: list[tuple[str, str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        def mat(c):
            return None if c is None else [[float(v) for v in row] for row in c]

        return {
            "bootstrap_corr": {
                "params": list(self.names),
                "centre": dict(self.centre),
                "matrix": mat(self.corr),
                "matrix_uncentred": mat(self.corr_uncentred),
                "threshold": self.corr_threshold,
                "not_separately_identified": [[a, b, c] for a, b, c in self.flagged],
            },
            "hessian_condition": self.hessian_condition,
            "hessian": {
                "condition_uncentred": self.hessian_condition_uncentred,
                "min_eigenvalue": self.hessian_min_eig,
                "params": list(self.free),
                "threshold": self.cond_threshold,
            },
        }


def joint_diagnostic(
    theta: np.ndarray,
    log_x: np.ndarray,
    log_y: np.ndarray,
    delta: float,
    boot: np.ndarray | None = None,
    corr_threshold: float = CORR_THRESHOLD,
    cond_threshold: float = HESSIAN_COND_THRESHOLD,
) -> JointDiagnostic:
    """Bootstrap correlations of the centred log-space parameters and the Hessian's condition number.

    (a) Pairs whose bootstrap |corr| exceeds corr_threshold are "not separately identified": the data pin
    down a combination of the two, not each. (b) The Hessian of the summed Huber objective at the optimum
    (numerical_hessian, transformed to the centred parameters, restricted to parameters not on a bound) has
    a condition number above cond_threshold when some combination is nearly flat. Only points with
    |residual| <= delta add curvature (Huber's linear region has none); that is the objective being fitted.
    """
    m = log_x.shape[1]
    pnames = PARAM_NAMES[m]
    names = tuple("log E" if k == "E" else (f"log {k}_c" if k in ("A", "B") else k) for k in pnames)
    M, mu = _centring(log_x)
    var = ("N", "D") if m == 2 else ("D",)
    centre = {f"log {v}": float(mu[j]) for j, v in enumerate(var)}
    free = ~on_bound(theta)
    H = numerical_hessian(theta, log_x, log_y, delta)
    Hc = M.T @ H @ M
    cond, min_eig = _condition(Hc[np.ix_(free, free)])
    cond_raw, _ = _condition(H[np.ix_(free, free)])
    warnings = []
    if np.isnan(cond):
        warnings.append("the Huber objective has no curvature at the optimum (no residual inside delta)")
    elif cond > cond_threshold:
        warnings.append(
            f"the Hessian of the objective is nearly singular: condition number {cond:.3g} "
            f"(> {cond_threshold:.0e}; centred log space, {int(free.sum())} free parameters): some "
            "combination of parameters is not determined by the data"
        )
    jd = JointDiagnostic(
        names=names,
        centre=centre,
        hessian_condition=cond,
        hessian_condition_uncentred=cond_raw,
        hessian_min_eig=min_eig,
        free=[pnames[i] for i in np.flatnonzero(free)],
        corr_threshold=corr_threshold,
        cond_threshold=cond_threshold,
    )
    if boot is not None and len(boot) > 2:
        boot_c = np.asarray(boot) @ np.linalg.inv(M).T
        jd.corr = _corr(boot_c)
        jd.corr_uncentred = _corr(np.asarray(boot))
        for i, j in itertools.combinations(range(len(names)), 2):
            c = jd.corr[i, j]
            if np.isfinite(c) and abs(c) > corr_threshold:
                jd.flagged.append((names[i], names[j], float(c)))
        if jd.flagged:
            pairs = "; ".join(f"{a} and {b} (corr {c:+.4f})" for a, b, c in jd.flagged)
            warnings.append(
                f"not separately identified (bootstrap |corr| > {corr_threshold}, centred log space): {pairs}"
            )
    jd.warnings = warnings
    return jd


def _corr(x: np.ndarray) -> np.ndarray:
    """Correlation matrix; NaN rows/columns for a parameter that never moved (e.g. held on a bound)."""
    sd = x.std(axis=0)
    ok = sd > 1e-12 * np.maximum(1.0, np.abs(x).max(axis=0))
    out = np.full((x.shape[1], x.shape[1]), np.nan)
    if ok.sum() >= 1:
        sub = np.atleast_2d(np.corrcoef(x[:, ok], rowvar=False))
        out[np.ix_(ok, ok)] = sub
    return out


# ---------------------------------------------------------------------------------------------------------
# data-level checks


def schedule_warnings(schedules: ArrayLike | None) -> list[str]:
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


def _interp_close(x: np.ndarray, y: np.ndarray, xq: np.ndarray, max_log_gap: float) -> np.ndarray:
    """y at xq: the value at a data point, or linear in log D between neighbours at most max_log_gap apart.

    NaN elsewhere (outside the curve, or inside a gap too wide to bridge). Repeated x values are averaged.
    """
    ux, inv = np.unique(np.round(x, 12), return_inverse=True)
    uy = np.bincount(inv, weights=y) / np.bincount(inv)
    xq = np.asarray(xq, dtype=float)
    if len(ux) == 1:
        return np.where(np.abs(xq - ux[0]) < 1e-9, uy[0], np.nan)
    j = np.clip(np.searchsorted(ux, xq), 1, len(ux) - 1)
    lo, hi = ux[j - 1], ux[j]
    inside = (xq >= lo - 1e-9) & (xq <= hi + 1e-9)
    at_point = (np.abs(xq - lo) < 1e-9) | (np.abs(xq - hi) < 1e-9)
    bridge = (hi - lo) <= max_log_gap
    return np.where(inside & (at_point | bridge), np.interp(xq, ux, uy), np.nan)


def larger_model_worse(
    N: ArrayLike,
    D: ArrayLike,
    loss: ArrayLike,
    groups: ArrayLike | None = None,
    *,
    noise: float = 0.0,
    min_ratio: float = 1.2,
    tol: float = 0.01,
    max_gap: float = MAX_D_GAP,
) -> list[str]:
    """Warn where a larger model has a higher loss than a smaller one at equal D.

    Each group (a run; by default all points of one N) is a curve of loss over log D. For every pair of
    groups whose N differ by at least `min_ratio`, both curves are compared at the D values of either curve
    where BOTH curves have data close by: at a data point of the curve, or between two of its neighbouring
    points whose D differ by at most a factor `max_gap` (module constant MAX_D_GAP). A median excess over
    those k >= 2 points above max(tol * median loss, 2 * noise * sqrt(2 / k)) (noise = residual scale of a
    fit) is reported.
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
        order = np.argsort(D[sel], kind="stable")
        curves.append((float(np.median(N[sel])), str(g), np.log(D[sel][order]), loss[sel][order]))
    thresh = tol * float(np.median(loss))
    log_gap = float(np.log(max_gap))
    found = []
    for (n1, g1, x1, y1), (n2, g2, x2, y2) in itertools.permutations(curves, 2):
        if n2 < n1 * min_ratio:
            continue
        lo, hi = max(x1[0], x2[0]), min(x1[-1], x2[-1])
        if hi < lo:
            continue
        xs = np.unique(np.concatenate([x1, x2]))
        xs = xs[(xs >= lo - 1e-12) & (xs <= hi + 1e-12)]
        diff = _interp_close(x2, y2, xs, log_gap) - _interp_close(x1, y1, xs, log_gap)
        ok = np.isfinite(diff)
        if ok.sum() < 2:
            continue
        excess = float(np.median(diff[ok]))
        if excess > max(thresh, 2.0 * noise * np.sqrt(2.0 / ok.sum())):
            xo = xs[ok]
            found.append((excess, n1, g1, n2, g2, float(np.exp(xo.min())), float(np.exp(xo.max()))))
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
