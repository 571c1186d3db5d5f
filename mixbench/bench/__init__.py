"""Benchmark machinery: the training engine, evaluators, the matrix runner, the results store."""
