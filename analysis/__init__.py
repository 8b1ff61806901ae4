"""analysis: scaling-law fits, iso-performance, ablation verdicts, eval checks, plots and the report card.

Entry point: python analysis/fit_laws.py (see its docstring). Modules, one home per concept:
  store        Tune experiment -> store/evals.parquet + runs.parquet, readers
  fitter       the summed Huber objective on log residuals, start grids, multi-start L-BFGS-B, bounds
  laws         approach 3 (L(N, D), LawFit, compute-optimal allocation), data curves L(D), the bootstrap
  diagnostics  identification, joint diagnostic (bootstrap correlations, Hessian condition), headline rule,
               larger-model-worse and LR-schedule checks
  isoflop      approach 2 (IsoFLOP parabolas, N* ~ C^a)
  isoperf      iso-loss contours and the compute-optimal frontier
  verdicts, evalcheck, plots, report
"""
