"""conda-store compatible conda environment service.

Importing this package touches no disk, network or environment: everything
process-dependent is computed lazily from configuration.
"""

__version__ = "2026.11.0"

__all__ = ["__version__"]
