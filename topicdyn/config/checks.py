"""Field checks shared by the config sections: each failure is one ConfigError naming the field
and the allowed values (the CLI prints it as one line and exits 2)."""
from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what is allowed."""


def check(ok: bool, name: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{name}: must be {allowed}, got {value!r}")


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def int_at_least(name: str, value, lo: int) -> None:
    check(is_int(value) and value >= lo, name, f"an integer >= {lo}", value)


def int_in(name: str, value, lo: int, hi: int) -> None:
    check(is_int(value) and lo <= value <= hi, name, f"an integer in [{lo}, {hi}]", value)


def prob(name: str, value) -> None:
    check(is_num(value) and 0.0 <= value <= 1.0, name, "a probability in [0, 1]", value)


def positive(name: str, value) -> None:
    check(is_num(value) and value > 0, name, "a number > 0", value)


def choice(name: str, value, options: tuple[str, ...]) -> None:
    check(value in options, name, "one of " + ", ".join(options), value)
