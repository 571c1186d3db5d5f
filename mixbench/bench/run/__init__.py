"""Running a matrix: cells from configurations, the matrix loop, the results store, evaluation
after training, export and import, launched workers, provenance.

- :mod:`~mixbench.bench.run.cells`: the cells of a matrix (resolved configurations, keys);
- :mod:`~mixbench.bench.run.matrix`: the resumable loop that claims and runs cells;
- :mod:`~mixbench.bench.run.store`: the results database (SQLite or PostgreSQL);
- :mod:`~mixbench.bench.run.evaluate`: every evaluator of a cell on its trained model;
- :mod:`~mixbench.bench.run.transfer`: finished cells to and from JSON Lines;
- :mod:`~mixbench.bench.run.launch`: workers launched through submitit (local or SLURM);
- :mod:`~mixbench.bench.run.provenance`: versions and hardware stored with each cell.
"""

#: The environment variable holding the results database URL (kept off command lines and
#: out of submitit's job files).
DB_ENV = "MIXBENCH_DB_URL"
