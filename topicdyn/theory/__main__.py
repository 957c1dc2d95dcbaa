"""python -m topicdyn.theory [PRESET] [SECTION.FIELD=VALUE ...]: print all predictions as JSON."""
import json
import sys

from topicdyn.config import Config, apply_overrides, preset
from topicdyn.theory.summary import predict


def main(argv: list[str]) -> None:
    name = argv[0] if argv and "=" not in argv[0] else None
    overrides = [a for a in argv if "=" in a]
    cfg = preset(name, overrides) if name else apply_overrides(Config(), overrides)
    print(json.dumps(predict(cfg), indent=2, default=float))


if __name__ == "__main__":
    main(sys.argv[1:])
