"""Figures and tables of the analysis (analysis/plots.py, analysis/report.py): their content, not their file size.

Run: pytest tests/test_analysis_plots.py
The figure builders return matplotlib Figures, so the tests count scatter points, look for fitted lines and
read colour norms. Two fits: an identified one (an IsoFLOP design of a known law) and one whose size term is
not identified (two model sizes, as in fVLM's upstream data).
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from laws_data import isoflop_points, law  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402

from analysis import plots  # noqa: E402
from analysis.isoflop import fit_isoflop  # noqa: E402
from analysis.laws import fit_parametric  # noqa: E402
from analysis.report import Analysis, _ci, metric_table  # noqa: E402


@pytest.fixture(scope="module")
def design():
    """5 budgets x 7 sizes around the compute-optimal N, 1% noise."""
    pts = isoflop_points(noise=0.01)
    fit = fit_parametric(pts["N"], pts["D"], pts["loss"], n_bootstrap=20, C=pts["C"])
    assert all(fit.identified.values())
    iso = fit_isoflop(pts["N"], pts["D"], pts["loss"], pts["budget"].to_numpy(), n_bootstrap=20)
    return pts, fit, iso


@pytest.fixture(scope="module")
def two_sizes():
    """Two model sizes with dense data curves: the size term is not identified."""
    rng = np.random.default_rng(1)
    N = np.repeat([1e8, 4e8], 20)
    D = np.tile(np.logspace(9, 11, 20), 2)
    pts = pd.DataFrame(
        {"N": N, "D": D, "C": 6 * N * D, "loss": law(N, D) * np.exp(0.005 * rng.normal(size=40))}
    )
    fit = fit_parametric(pts["N"], pts["D"], pts["loss"], n_bootstrap=0, C=pts["C"])
    assert not fit.identified["alpha"] and fit.derived("a_opt").suppressed
    return pts, fit


def _n_scatter(ax) -> int:
    return sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))


def _lines(ax) -> list:
    """Drawn lines (seaborn adds empty ones as legend handles)."""
    return [line for line in ax.lines if len(line.get_xdata()) > 0]


def _labels(ax) -> list[str]:
    return [line.get_label() for line in _lines(ax)]


def test_loss_vs_compute_draws_every_point_and_the_fit(design):
    pts, fit, _ = design
    fig = plots.loss_vs_compute_figure(pts, fit)
    ax = fig.axes[0]
    assert _n_scatter(ax) == len(pts)
    assert len(_lines(ax)) >= 3  # fitted L(N, C) at measured sizes
    assert all(np.isfinite(line.get_ydata()).all() for line in _lines(ax))
    plt.close(fig)
    fig = plots.loss_vs_compute_figure(pts, None)
    assert _n_scatter(fig.axes[0]) == len(pts) and _lines(fig.axes[0]) == []
    plt.close(fig)


def test_iso_loss_colour_scale_spans_the_measured_loss(design):
    pts, fit, iso = design
    notes = []
    fig = plots.iso_loss_figure(pts, fit, iso, notes=notes)
    ax = fig.axes[0]
    measured = next(
        c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets()) == len(pts)
    )
    assert measured.norm.vmin == pytest.approx(pts["loss"].min()) and measured.norm.vmax == pytest.approx(
        pts["loss"].max()
    )
    np.testing.assert_allclose(measured.get_array(), pts["loss"].to_numpy())
    assert "compute-optimal frontier (approach 3)" in _labels(ax) and notes == []
    assert any(type(c).__name__ == "QuadContourSet" for c in ax.collections)
    assert fig.axes[1].get_ylabel() == "measured loss"  # the colour bar
    plt.close(fig)


def test_unidentified_fit_leaves_out_frontier_and_allocation(design, two_sizes):
    pts, fit = two_sizes
    notes = []
    fig = plots.iso_loss_figure(pts, fit, notes=notes)
    ax = fig.axes[0]
    assert _n_scatter(ax) == len(pts)
    assert _lines(ax) == [] and not any(
        type(c).__name__ == "QuadContourSet" for c in ax.collections + ax.containers
    )
    assert (
        len(notes) == 1 and "frontier not drawn: not identified (A and alpha are not identified)" in notes[0]
    )
    plt.close(fig)
    with pytest.raises(plots.SkipFigure):  # nothing identified to draw
        plots.optimal_allocation_figure(None, fit, (1e18, 1e21), notes=[])
    # with approach 2 available, the figure keeps it and drops approach 3
    _, good_fit, iso = design
    notes = []
    fig = plots.optimal_allocation_figure(iso, fit, (1e18, 1e21), notes=notes)
    for ax in fig.axes:
        labels = _labels(ax)
        assert any(lab.startswith("approach 2: C^") for lab in labels)
        assert not any(lab.startswith("approach 3") for lab in labels)
    assert any("approach-3 allocation not drawn" in n for n in notes)
    plt.close(fig)
    fig = plots.optimal_allocation_figure(iso, good_fit, (1e18, 1e21))
    assert any(lab.startswith("approach 3: C^0.5") for lab in _labels(fig.axes[0]))
    plt.close(fig)


def _store_frames():
    """3 complete runs, a diverged one with absurd losses and a still-running one."""
    evals, runs = [], []
    for k, (tid, status, scale) in enumerate(
        [
            ("c0", "complete", 1.0),
            ("c1", "complete", 1.0),
            ("c2", "complete", 1.0),
            ("d0", "diverged", 40.0),
            ("r0", "running", 20.0),
        ]
    ):
        for i, s in enumerate((100, 200, 400, 800)):
            evals.append(
                {
                    "trial_id": tid,
                    "tier": 1,
                    "arm": "baseline",
                    "samples_seen": s,
                    "val_loss_fine": scale * (2.0 - 0.1 * i),
                    "val_loss_coarse": scale * (2.1 - 0.1 * i),
                }
            )
        runs.append(
            {
                "trial_id": tid,
                "tier": 1,
                "budget_flops": 1e15,
                "arm": "baseline",
                "status": status,
                "final_val_loss": scale * (1.6 + 0.1 * k),
                "final_loss_ratio": 0.9 + 0.05 * k if scale == 1.0 else 5.0 + scale,
            }
        )
    return pd.DataFrame(evals), pd.DataFrame(runs)


def test_fine_vs_coarse_uses_complete_runs_only():
    evals, runs = _store_frames()
    notes = []
    fig = plots.fine_vs_coarse_figure(evals, runs, notes=notes)
    left, right = fig.axes[:2]
    ys = np.concatenate([line.get_ydata() for line in left.lines if len(line.get_xdata()) > 1])
    assert ys.size == 3 * 2 * 4 and ys.max() < 3.0  # 3 runs x (fine, coarse) x 4 evals; no diverged losses
    xs = np.concatenate([c.get_offsets()[:, 0] for c in right.collections if isinstance(c, PathCollection)])
    assert sorted(np.round(xs, 6)) == [0.9, 0.95, 1.0]  # the strip: one point per complete run
    assert notes == ["2 run(s) that did not complete left out"]
    plt.close(fig)


def test_metric_table_averages_complete_runs_only():
    _, runs = _store_frames()
    table = metric_table(runs)
    row = next(line for line in table.splitlines() if line.startswith("| 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    head = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    got = dict(zip(head, cells, strict=True))
    assert got["complete runs"] == "3" and got["status"] == "3 complete, 1 diverged, 1 running"
    assert got["val_loss"] == "1.7 (0.1)" and got["loss_ratio"] == "0.95 (0.05)"


def test_ci_is_never_printed_around_nan():
    assert _ci((0.007993, 4.244e12), float("nan")) == "n/a"
    assert _ci((float("nan"), 1.0), 0.5) == "n/a" and _ci(None) == "n/a"
    assert _ci((1.0, 2.0), 1.5) == "[1, 2]"


def test_make_all_reports_left_out_parts_and_never_crashes(tmp_path, two_sizes):
    pts, fit = two_sizes
    a = Analysis(source={"kind": "csv"}, settings={}, points=pts, parametric=fit)
    paths, warnings = plots.make_all(a, tmp_path)
    names = {p.name for p in paths}
    assert {"loss_vs_compute.png", "iso_loss.png", "residuals.png"} <= names
    assert "optimal_allocation.png" not in names
    assert any(w.startswith("plot optimal_allocation.png skipped") for w in warnings)
    assert any(
        w.startswith("plot iso_loss.png: iso-loss contours and approach-3 frontier not drawn")
        for w in warnings
    )
    assert not any("failed" in w for w in warnings), warnings
