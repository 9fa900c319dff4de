"""numbanorm-study: the claims made about BatchNorm and its relatives, reproduced and measured
with numbanorm's own trainer (numbanorm.training), written up as DIR/REPORT.md (a section per
experiment: setup, table, plot, verdict computed from the table), PNGs and DIR/results.json.

    numbanorm-study                              # the full study on the embedded digits
    numbanorm-study --quick --out /tmp/s         # small subsets, few steps (minutes)
    numbanorm-study --dataset mnist --data-dir ~/mnist --experiments convergence,batch-size

Modules: experiments.py (the six experiments and their verdicts), report.py (REPORT.md, plots,
results.json), cli.py (the command line).
"""
from .cli import main

__all__ = ["main"]
