"""Speed benchmarks, ratios measured in one run (``mixbench perf``).

- :mod:`~mixbench.bench.perf.suite`: the registry of benchmarks and the run that prints them;
- :mod:`~mixbench.bench.perf.methods`: each method's training step against ERM's;
- :mod:`~mixbench.bench.perf.data`: the loader, the engine's overhead, end to end.
"""
