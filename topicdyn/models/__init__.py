"""Model registry: variant name -> `Variant` (topicdyn.models.variant).

Built-in variants register themselves here. A variant outside the package is named by its import
path, `model.name=package.module:attribute` (an attribute holding a Variant instance or class):
it is imported and registered under that name the first time a config names it, before the
config is validated, so the rest of the simulator sees it exactly like a built-in one. An unknown
name is a ConfigError listing the registered ones.
"""
from __future__ import annotations

import importlib

from topicdyn.models.variant import Variant

VARIANTS: dict[str, Variant] = {}


def register(variant: Variant | type) -> Variant:
    """Register a Variant (instance or class) under its `name`; returns the instance. Usable as a
    class decorator."""
    v = variant() if isinstance(variant, type) else variant
    if not isinstance(v, Variant) or not v.name:
        raise TypeError(f"register: expected a Variant with a name, got {variant!r}")
    VARIANTS[v.name] = v
    return variant


def get_variant(name: str) -> Variant:
    """The variant called `name`, importing `package.module:attribute` names on first use."""
    if name in VARIANTS:
        return VARIANTS[name]
    from topicdyn.config import ConfigError

    if isinstance(name, str) and ":" in name:
        mod, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(mod), attr)
        except Exception as e:  # noqa: BLE001  any failure of the user's module is one line
            raise ConfigError(f"model.name: cannot import {name!r} ({type(e).__name__}: {e}); "
                              "an import path is package.module:attribute") from None
        v = obj() if isinstance(obj, type) and issubclass(obj, Variant) else obj
        if not isinstance(v, Variant):
            raise ConfigError(f"model.name: {name!r} is not a topicdyn Variant "
                              f"(got {type(v).__name__})")
        VARIANTS[name] = v
        return v
    raise ConfigError(f"model.name: must be one of {', '.join(sorted(VARIANTS))} or an import "
                      f"path package.module:variant, got {name!r}")


def get_model(name: str) -> Variant:
    """Alias of get_variant (the variant has init and apply)."""
    return get_variant(name)



from topicdyn.models import transformer as _transformer  # noqa: E402,F401  (registers variants)
from topicdyn.models import reference as _reference  # noqa: E402,F401
