"""python -m topicdyn.theory [PRESET] [SECTION.FIELD=VALUE ...]: print all predictions as JSON."""
import json
import sys

from topicdyn.config import Config, ConfigError, apply_overrides, preset
from topicdyn.theory.summary import predict


def main(argv: list[str]) -> int:
    name = argv[0] if argv and "=" not in argv[0] else None
    overrides = [a for a in argv if "=" in a]
    try:
        cfg = preset(name, overrides) if name else apply_overrides(Config(), overrides)
    except ConfigError as e:
        print(f"topicdyn.theory: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(predict(cfg), indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
