"""Registries are plain dicts of ``name -> "module:Class"``; this builds the named entry, importing it lazily."""

from __future__ import annotations

from importlib import import_module
from typing import Any, Mapping


def instantiate(registry: Mapping[str, str], name: str, kind: str, also_valid: str = "") -> Any:
    """``registry[name]()`` after importing its module; an unknown name raises ValueError listing the valid ones."""
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; valid {kind}s are {sorted(registry)}{also_valid}")
    module, cls = registry[name].split(":")
    return getattr(import_module(module), cls)()
