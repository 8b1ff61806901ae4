"""The headroom a learned query captures, H = (L_static - L_learned) / (L_static - L_oracle), with its CI.

    from analysis.headroom import headroom, headroom_from_runs
    h = headroom(static=[.71, .70, .72], learned=[.69, .70, .68], oracle=[.36, .38, .35])
    print(h.text())     # "H = 0.08, 95% CI [-0.02, 0.18] (Fieller, 3 paired seeds) ..."

H = 0 means the learned (LLM-made) queries do no better than a static one; H = 1 means they do as well as
the oracle (the same read aimed at the true target); H < 0 means worse than static. The three arms are
paired by seed (same init and data order), so with per-seed gains x_i = static_i - learned_i and headroom
y_i = static_i - oracle_i the estimate is the ratio of means, H = mean(x) / mean(y) (the mean of per-seed
ratios is unstable when one seed's headroom is small).

Confidence interval: Fieller's theorem (Fieller, E. C. (1954), "Some problems in interval estimation",
J. R. Stat. Soc. B 16(2):175-185), with Student t at n - 1 degrees of freedom and the sample covariance of
the paired (x, y): the set of ratios r for which mean(x) - r mean(y) = 0 is not rejected, i.e. the roots of
(mean(y)^2 - t^2 v_yy) r^2 - 2 (mean(x) mean(y) - t^2 v_xy) r + (mean(x)^2 - t^2 v_xx) = 0, with v = cov / n.
It is a bounded interval only when the headroom itself is significant (mean(y)^2 > t^2 v_yy); otherwise the
set is unbounded and H is NOT IDENTIFIED: the oracle is not reliably better than the static query, so no
share of it can be stated. Exact for normally distributed (x, y).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats


@dataclass
class Headroom:
    h: float  # ratio of mean gains: the share of the oracle's headroom that the learned query captures
    ci95: tuple[float, float]  # Fieller 95% interval; (nan, nan) when not identified
    identified: bool  # the headroom (static - oracle) is significantly > 0 at the seeds used
    n: int  # paired seeds
    gain: float  # mean(static - learned)
    room: float  # mean(static - oracle)
    notes: list[str] = field(default_factory=list)

    def impact(self) -> str:
        """What the number says for the thesis, in one phrase."""
        if not self.identified:
            return "headroom not established: the oracle is not reliably better than the static query"
        lo, hi = self.ci95
        if lo > 0:
            return "the learned query captures part of the headroom (H > 0)"
        if hi < 0:
            return "the learned query is worse than the static one (H < 0)"
        return "no evidence that the learned query beats the static one (the CI spans 0)"

    def text(self) -> str:
        base = f"{self.n} paired seeds; gain {self.gain:+.4g}, headroom {self.room:+.4g} (static - oracle)"
        if not self.identified:
            return f"H not identified ({base}: the oracle is not significantly better than the static query)"
        lo, hi = self.ci95
        return f"H = {self.h:.3g}, 95% CI [{lo:.3g}, {hi:.3g}] (Fieller, {base})"


def headroom(static, learned, oracle, confidence: float = 0.95) -> Headroom:
    """H and its Fieller interval from per-seed final losses of the three arms (equal length, paired)."""
    s, lrn, o = (np.asarray(a, dtype=float) for a in (static, learned, oracle))
    if not (len(s) == len(lrn) == len(o)):
        raise ValueError(f"arms need one value per paired seed, got {len(s)}, {len(lrn)}, {len(o)}")
    n = len(s)
    x, y = s - lrn, s - o
    gain, room = (float(x.mean()), float(y.mean())) if n else (math.nan, math.nan)
    h = gain / room if n and room != 0 else math.nan
    if n < 2 or not np.all(np.isfinite(np.r_[x, y])):
        return Headroom(h, (math.nan, math.nan), False, n, gain, room, ["fewer than 2 finite paired seeds"])
    cov = np.cov(np.vstack([x, y]), ddof=1) / n
    t = float(stats.t.ppf(0.5 + confidence / 2, n - 1))
    a = room**2 - t**2 * cov[1, 1]
    b = -2 * (gain * room - t**2 * cov[0, 1])
    c = gain**2 - t**2 * cov[0, 0]
    disc = b * b - 4 * a * c
    if a <= 0 or disc < 0:  # the denominator is not significantly non-zero: the set of ratios is unbounded
        return Headroom(h, (math.nan, math.nan), False, n, gain, room)
    r = math.sqrt(disc)
    ci = (float((-b - r) / (2 * a)), float((-b + r) / (2 * a)))
    return Headroom(float(h), ci, room > 0, n, gain, room)


def headroom_from_runs(
    runs: pd.DataFrame,
    *,
    metric: str = "final_val_loss",
    static: str = "static",
    learned: str = "baseline",
    oracle: str = "oracle",
) -> Headroom | None:
    """H from a runs table (one row per arm and seed, complete runs only); None unless all three arms ran."""
    df = runs
    if "status" in df.columns:
        df = df[df["status"].astype(str) == "complete"]
    df = df.assign(arm=df["arm"].astype(str))
    arms = {name: df[df["arm"] == name].set_index("seed")[metric] for name in (static, learned, oracle)}
    if any(a.empty for a in arms.values()):
        return None
    seeds = sorted(set.intersection(*(set(a.index) for a in arms.values())), key=str)
    out = headroom(*(arms[k].loc[seeds].to_numpy(dtype=float) for k in (static, learned, oracle)))
    missing = sorted(set.union(*(set(a.index) for a in arms.values())) - set(seeds), key=str)
    if missing:
        out.notes.append(f"seeds not in all three arms, left out: {missing}")
    return out
