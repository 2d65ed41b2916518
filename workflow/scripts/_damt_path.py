"""Make the repository's ``damt`` package importable from rule scripts.

Snakemake runs scripts from a temporary copy and only puts the script folder on ``sys.path``;
inside a rule's conda environment ``damt`` is not installed, so the repository root is added.
Where ``damt`` is installed (the Makefile's virtual environment) this is the same code.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
