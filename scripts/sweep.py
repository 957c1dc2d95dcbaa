"""Run a sweep spec: `python scripts/sweep.py scripts/sweeps/two_stage_lag.json [--dry-run]`.

The same as `topicdyn sweep SPEC ...` (see the README's "Sweeps" section and topicdyn/sweep/).
"""
import sys

from topicdyn.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
