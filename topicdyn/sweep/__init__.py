"""Sweeps: grids x seeds, one compiled program per array shape, the member axis sharded over
devices, resumable, with a per-seed summary table and phase-diagram figures.

    spec = load_spec("scripts/sweeps/two_stage_lag.json")   # validated: ConfigError if bad
    report = run_sweep(spec)                                 # trains what is not done yet
    rows = read_summary(spec.out)                            # sweep_summary.jsonl rows

See spec.py (the spec format), group.py (batching and sharding), execute.py (resume),
summary.py (columns) and plots.py (figures).
"""
from topicdyn.sweep.execute import plan, run_sweep
from topicdyn.sweep.spec import VMAPPED, Point, Spec, group_points, load_spec, parse_spec
from topicdyn.sweep.summary import read_summary, write_summary

__all__ = ["VMAPPED", "Point", "Spec", "group_points", "load_spec", "parse_spec", "plan",
           "read_summary", "run_sweep", "write_summary"]
