"""The machinery of a run: what it is made of (context), checkpoints, resume, stops on a
signal, distributed launch, progress and console lines, results and sweep summaries.

Shared by the Lightning loops and the explicit loop. May import tasks, data, nets and
errors; never loops, api or cli.
"""
