"""Benchmark machinery, in sub-packages that import one way (each only those above it here):

- :mod:`~mixbench.bench.evaluators`: the registered evaluators (a component, like methods);
- :mod:`~mixbench.bench.train`: training one cell (data, engine, metrics, compute);
- :mod:`~mixbench.bench.run`: running a matrix (cells, loop, store, evaluation, launch);
- :mod:`~mixbench.bench.tuning` and :mod:`~mixbench.bench.perf`: tuning studies and speed
  benchmarks, built on the two above.
"""
