"""The version of mixbench and the folder it is installed in."""

from pathlib import Path

__version__ = "0.1.0"

#: The folder of the ``mixbench`` package (in a source checkout, below the checkout's root).
PACKAGE_DIR = Path(__file__).resolve().parent
