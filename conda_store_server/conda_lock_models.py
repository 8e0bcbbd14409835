"""conda-lock's v1 lockfile models: the definition of the format we serve and accept.

conda-lock's package __init__ imports its whole CLI, and two of those modules emit deprecation
warnings at import time (a vendored conda `frozendict` shim and `importlib.resources.path`).
Under `filterwarnings = error` those would abort whichever import reaches conda_lock first. The
filter is scoped to this import, to deprecation categories, and to warnings attributed to
conda_lock's own modules, so nothing else is hidden.
"""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"conda_lock(\.|$)")
    warnings.filterwarnings("ignore", category=PendingDeprecationWarning, module=r"conda_lock(\.|$)")
    from conda_lock.lockfile.v1.models import HashModel, LockedDependency, Lockfile, LockMeta

__all__ = ["HashModel", "LockMeta", "LockedDependency", "Lockfile"]
