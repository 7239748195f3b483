"""Presentation: everything kvbench shows a person, read from result documents.

``numbers``     figures, ratios, units as text
``cases``       what a case is judged by (headline metric and columns the benchmark declares)
``machine``     the one formatter of a machine and a run (info, summary, report, compare)
``page``        Table and Page, rendered by rich and as self-contained HTML; writing them
``headline``    the headline section: counts, flags, each benchmark's highlights and plots
``summary``     the summary ``kvbench run`` prints
``run_report``  ``kvbench report``: one result file
``compare``     ``kvbench compare``: result files side by side

Argument parsing lives with the CLI (kvbench/cli/report.py). Nothing here imports torch.
"""
