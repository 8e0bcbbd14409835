"""The REST API: every module of this package that defines `router` serves its routes.

Discovery keeps each group of routes in its own module (one job each) without a central list
that every new group must edit.
"""

from __future__ import annotations

import importlib
import pkgutil

from fastapi import APIRouter


def routers() -> list[APIRouter]:
    """The routers of the API modules, the core `v1` first (its paths are matched first)."""
    names = sorted(info.name for info in pkgutil.iter_modules(__path__))
    names.sort(key=lambda name: name != "v1")
    modules = [importlib.import_module(f"{__name__}.{name}") for name in names]
    return [module.router for module in modules if isinstance(getattr(module, "router", None), APIRouter)]
