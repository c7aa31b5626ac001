"""The throughput scenarios' names, and what each runs (docs/performance.md#throughput).

A pipeline scenario is named by its workers (`pipeline-2w`), a peer's by its processes
(`monolith-2p`); the references of one process by their kind alone.
"""

from __future__ import annotations

from collections.abc import Sequence

PIPELINE = "pipeline"
MIX = "model-mix"  # the pipeline fed requests for both models, half each
LIMIT, MONOLITH = "passthrough", "monolith"
# One worker on the bench's model with a candidate (routed_model.py): each scenario's suffix, and the
# (canary share, shadow share) it routes to the candidate.
ROUTED = {"canary10": (0.1, 0.0), "shadow100": (0.0, 1.0)}
# One worker with tracing on, fed requests that each carry a trace of their own (`traceparent`), of
# which this share is sampled (recorded) by their producer.
TRACED = {f"{PIPELINE}-1w-traced": 1.0, f"{PIPELINE}-1w-traced-1pct": 0.01}
# One worker whose feature rows are all reused for the TTL alone, none held until the next
# materialisation (docs/performance.md#feature-cache).
FEATURE_TTL = f"{PIPELINE}-1w-ttl"


def pipeline_scenario(workers: int) -> str:
    return f"{PIPELINE}-{workers}w"


def mix_scenario(workers: int) -> str:
    return f"{MIX}-{workers}w"


def routed_scenario(kind: str) -> str:
    return f"{pipeline_scenario(1)}-{kind}"


def routing_of(scenario: str) -> tuple[float, float] | None:
    """A routed scenario's (canary share, shadow share); None for the others."""
    return next((shares for kind, shares in ROUTED.items() if scenario == routed_scenario(kind)), None)


def runs_workers(scenario: str) -> bool:
    """The scenario runs the pipeline's own workers (not a peer)."""
    return scenario.startswith((f"{PIPELINE}-", f"{MIX}-"))


def peer_scenario(kind: str, processes: int) -> str:
    return f"{kind}-{processes}p"


def throughput_scenarios(workers: Sequence[int]) -> list[tuple[str, int]]:
    """Each throughput scenario, in run order, with how many consumer processes it runs: the limit,
    the pipeline and the monolith at each process count, the pipeline on a mix of both models, and
    three references of one process; one worker with a candidate routed at each share of ROUTED, and
    one with tracing on at each sampled share of TRACED, and one with its feature rows under the TTL
    alone."""
    scenarios = [(peer_scenario(LIMIT, n), n) for n in workers]
    scenarios.append(("passthrough-librdkafka", 1))
    scenarios += [(pipeline_scenario(n), n) for n in workers]
    scenarios += [(routed_scenario(kind), 1) for kind in ROUTED]
    scenarios += [(scenario, 1) for scenario in TRACED]
    scenarios.append((FEATURE_TTL, 1))
    scenarios.append((mix_scenario(1), 1))
    scenarios += [(peer_scenario(MONOLITH, n), n) for n in workers]
    return [*scenarios, ("monolith-at-least-once", 1), ("naive", 1)]


def peer_kind(scenario: str) -> str:
    """The `pipeline bench-peer` kind a peer scenario runs: its name less the process count."""
    head, _, tail = scenario.rpartition("-")
    return head if head and tail[:-1].isdigit() and tail.endswith("p") else scenario
