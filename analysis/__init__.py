"""analysis: scaling-law fits, iso-performance, ablation verdicts, eval checks, plots and the report card.

Entry point: python analysis/fit_laws.py (see its docstring). Modules: store (Tune experiment -> parquet),
laws (approach 3, approach 2, data curves, diagnostics), isoperf, verdicts, evalcheck, plots, report.
"""
