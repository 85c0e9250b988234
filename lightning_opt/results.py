"""An experiment's or a benchmark's results as data (one row per final run): ``rows(path)``, a
list of dicts, and ``load(path)``, a pandas DataFrame. Defined in ``reports.table``.

    from lightning_opt import results
    df = results.load("lightning_logs/compare/gnw_vs_adam")   # an experiment's folder
    df.groupby("arm")["test_loss"].describe()
    results.rows("lightning_logs/benchmark/mnist1d")          # a benchmark: + workload
"""

from lightning_opt.reports.table import RUN_COLUMNS, load, rows

__all__ = ["RUN_COLUMNS", "load", "rows"]
