"""``kvbench claims``: the research's claims, each checked by kvbench's arithmetic or by a
measurement read from result files. Pure Python like kvbench.sizing (no torch).

``core``      the claim, its figures and the verdict vocabulary
``catalog``   configs/claims.yaml, loaded and validated
``evidence``  result files: cases by benchmark, the hardware they ran on
``checks``    the registry of checks; one module per check: ``hot_window``, ``dequant``,
              ``ssd``, ``kv_ratio``, ``token_cost``, ``fleet``
``present``   rich tables and the JSON document
``cli``       the ``claims`` subcommand

See docs/claims.md.
"""

from kvbench.claims.catalog import load_claims, select
from kvbench.claims.checks import CHECKS, evaluate_all
from kvbench.claims.core import VERDICTS, Claim, Evaluation, Figure
from kvbench.claims.evidence import Evidence, load_evidence

__all__ = ["CHECKS", "VERDICTS", "Claim", "Evaluation", "Evidence", "Figure", "evaluate_all", "load_claims",
           "load_evidence", "select"]
