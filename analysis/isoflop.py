"""Approach 2 (IsoFLOP): per-budget parabola optima and the power laws N* = kN C^a, D* = kD C^b.

Usage (library; the CLI is analysis/fit_laws.py):
    from analysis.isoflop import fit_isoflop
    iso = fit_isoflop(N, D, loss, budget)        # points grouped by compute budget
    iso.derived("a").text()                      # '0.51 [0.47, 0.55]', or 'not identified (why)'
    iso.to_json()["a"]                           # None (null) with "a_note" when withheld

Hoffmann et al. 2022 (arXiv 2203.15556), approach 2: for each budget fit a parabola of loss in log N and take
its vertex; regress log N* and log D* on log C over the budgets.

Headline rule for a and b (the same spirit as analysis/diagnostics.py's rule for approach 3):
  * fewer than 3 budgets with a valid minimum: a and b are withheld ("not identified"; null in fits.json),
    because a line through 2 points has no residual left to check the power law or to estimate its error;
  * a 95% bootstrap CI wider than 0.5 (WEAK_CI_WIDTH): a and b are stated with their CI and marked "weakly
    determined", not withheld: the CI itself says how little the data pin down.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import t as student_t

from analysis.diagnostics import WEAK_CI_WIDTH, Derived, schedule_warnings
from analysis.fitter import check_inputs

# budgets with a valid parabola minimum needed before a and b are stated
MIN_BUDGETS = 3


@dataclass
class IsoFlopFit:
    """Approach 2: per-budget parabola optima and power laws N* = kN C^a, D* = kD C^b."""

    budgets: list[dict]
    a: float | None  # raw slope estimates (None with < 2 valid budgets); headlines go through derived()
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

    def derived(self, name: str) -> Derived:
        """a or b under the module's headline rule."""
        value = self.a if name == "a" else self.b
        if value is None:
            return Derived(
                None,
                None,
                "not identified",
                f"{self.n_budgets} budget(s) with a valid minimum (need >= {MIN_BUDGETS})",
            )
        if self.n_budgets < MIN_BUDGETS:
            return Derived(
                None,
                None,
                "not identified",
                f"only {self.n_budgets} budgets with a valid minimum (need >= {MIN_BUDGETS}: a line through 2 "
                "points leaves no residual to check it)",
            )
        ci = self.ci95.get(name)
        if ci is not None and ci[1] - ci[0] > WEAK_CI_WIDTH:
            return Derived(
                value,
                ci,
                "weakly determined",
                f"95% CI [{ci[0]:.3g}, {ci[1]:.3g}] wider than {WEAK_CI_WIDTH}",
            )
        return Derived(value, ci)

    def n_opt(self, C: ArrayLike) -> np.ndarray:
        return np.exp(self.log_kN) * np.asarray(C, dtype=float) ** self.a

    def d_opt(self, C: ArrayLike) -> np.ndarray:
        return np.exp(self.log_kD) * np.asarray(C, dtype=float) ** self.b

    def band(self, C: ArrayLike, which: str = "N") -> tuple[np.ndarray, np.ndarray]:
        """Pointwise 95% band of N*(C) or D*(C) from the bootstrap."""
        C = np.asarray(C, dtype=float)
        if self.boot is None or len(self.boot) < 2:
            v = self.n_opt(C) if which == "N" else self.d_opt(C)
            return v, v
        k, s = (1, 0) if which == "N" else (3, 2)
        curves = np.exp(self.boot[:, [k]]) * C[None, :] ** self.boot[:, [s]]
        return np.percentile(curves, 2.5, axis=0), np.percentile(curves, 97.5, axis=0)

    def to_json(self) -> dict:
        """fits.json's block; a withheld a or b is null with "<name>_note" giving the reason."""
        out: dict = {}
        ci95 = {k: list(v) for k, v in self.ci95.items()}
        ci95_ols = {k: list(v) for k, v in self.ci95_ols.items()}
        for name in ("a", "b"):
            d = self.derived(name)
            out[name], out[f"{name}_note"] = d.value, d.note
            if d.suppressed:
                for c in (ci95, ci95_ols):
                    if name in c:
                        c[name] = None
        withheld = self.derived("a").suppressed
        out.update(
            ci95=ci95,
            ci95_ols=ci95_ols,
            n_budgets=self.n_budgets,
            log_kN=None if withheld else self.log_kN,
            log_kD=None if withheld else self.log_kD,
            n_bootstrap=self.n_bootstrap,
            n_bootstrap_ok=self.n_bootstrap_ok,
            budgets=self.budgets,
            warnings=list(self.warnings),
        )
        return out


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
    N: ArrayLike,
    D: ArrayLike,
    loss: ArrayLike,
    budget: ArrayLike,
    *,
    C: ArrayLike | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    schedules: ArrayLike | None = None,
) -> IsoFlopFit:
    """Approach 2 on points grouped by compute budget.

    Per budget: a parabola of loss in ln N (>= 3 sizes and a minimum inside the sampled range, else that
    budget is refused with the reason), D* from the budget's own ln D vs ln N line. Then least squares
    ln N* = a ln C + ln kN and ln D* = b ln C + ln kD over the budgets. CIs: percentile bootstrap
    resampling points within each budget (ci95), and t intervals of the slope with >= 3 budgets (ci95_ols).
    C per budget: the budget value when numeric, else the median compute of its points.
    """
    N, D, loss = (np.asarray(v, dtype=float).ravel() for v in (N, D, loss))
    check_inputs({"N": N, "D": D, "loss": loss}, n_min=3)
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
    if len(ok) < MIN_BUDGETS:
        warnings.append(
            "only 2 budgets: the power law N*(C) has no degrees of freedom left to check it (a and b not reported)"
        )
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
        if lo_hi[1] - lo_hi[0] > WEAK_CI_WIDTH:
            warnings.append(
                f"the 95% CI of {name} is wider than {WEAK_CI_WIDTH}: [{lo_hi[0]:.3g}, {lo_hi[1]:.3g}] "
                "(weakly determined)"
            )
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
