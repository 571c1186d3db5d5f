"""Training one cell: its data, the Ignite engine, the metrics, the measured compute.

- :mod:`~mixbench.bench.train.data`: the cell's data set and batch loaders;
- :mod:`~mixbench.bench.train.engine`: ``train_cell``, built as model, optimizer and data,
  ``create_trainer``, ``create_evaluator`` and handlers attached with event filters;
- :mod:`~mixbench.bench.train.metrics`: the per-epoch test metrics (Ignite metrics);
- :mod:`~mixbench.bench.train.compute`: network passes and BN updates counted per step.
"""
