"""The registry of claim checks: one entry per kind of check, keyed by the name a claim's
``check`` field gives. Each declares its parameters (validated when configs/claims.yaml
is loaded), whether ``--scenario`` replaces its scenario, and its evaluator
``evaluate(claim, evidence) -> Evaluation``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kvbench.claims import dequant, fleet, hot_window, kv_ratio, ssd, token_cost
from kvbench.claims.core import Claim, Evaluation, Param
from kvbench.claims.evidence import Evidence


@dataclass(frozen=True)
class Check:
    key: str
    description: str
    params: dict[str, Param]
    evaluate: Callable[[Claim, Evidence], Evaluation]
    #: ``--scenario`` replaces the claim's ``scenario`` parameter
    takes_scenario: bool = False


CHECKS: dict[str, Check] = {c.key: c for c in (
    Check("hot_window", "a hot window of recent tokens in HBM: does it fit beside the weights (arithmetic), "
                        "what decode rate it gives vs all-HBM (decode results)",
          hot_window.PARAMS, hot_window.evaluate, takes_scenario=True),
    Check("dequant_share", "the unfused dequantization's share of a decode step, the fused kernel's time over "
                           "the bytes floor (decode results, GPU)", dequant.PARAMS, dequant.evaluate),
    Check("ssd_per_gpu", "an SSD capacity per GPU: the sources' agreement, tokens of KV it holds (arithmetic), "
                         "time to read it back (transfer results)", ssd.PARAMS, ssd.evaluate, takes_scenario=True),
    Check("kv_ratio", "one model's KV cache as a fraction of another's at a context (arithmetic)",
          kv_ratio.PARAMS, kv_ratio.evaluate),
    Check("token_cost", "device time per output token vs per prompt token (e2e, or decode with prefix, results)",
          token_cost.PARAMS, token_cost.evaluate),
    Check("fleet_totals", "a fleet's tier totals vs the sizing model's reproduction and corrected totals "
                          "(arithmetic)", fleet.PARAMS, fleet.evaluate),
)}


def evaluate_all(claims: list[Claim], ev: Evidence) -> list[Evaluation]:
    """Each claim's evaluation, in order. A claim whose inputs are bad (a scenario or model
    that does not load) raises one KvbenchError line naming the claim."""
    from dataclasses import replace

    from kvbench.errors import KvbenchError

    out = []
    for claim in claims:
        check = CHECKS[claim.check]
        try:
            e = check.evaluate(claim, ev)
        except KvbenchError as exc:
            raise KvbenchError(f"claim {claim.id}: {exc}") from None
        if ev.scenario and not check.takes_scenario and "scenario" in check.params:
            e = replace(e, notes=(*e.notes, f"--scenario {ev.scenario} not applied: the claim's figures are "
                                            f"scenario {claim.params['scenario']}'s"))
        out.append(e)
    return out
