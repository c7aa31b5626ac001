"""The options of `pipeline bench`, declared once.

A field of `Options` whose type carries a `typer.Option` is an option of the command (its name,
default and help); the others are set by code and tests only. `command` makes a function that takes
an `Options` into the command typer builds: those options first, then the function's own.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import Field, dataclass, fields
from typing import Annotated, Any

import typer

from pipeline.bench.scenarios import throughput_scenarios

_KEYWORD = inspect.Parameter.KEYWORD_ONLY
GROUPS = ("throughput", "http", "state", "consumers", "replay", "burst")  # as --only names them
ALL = ",".join(GROUPS)


@dataclass(frozen=True)
class Options:
    # The throughput group. The naive peer is hundreds of times slower: fewer events, same rate measure.
    events: Annotated[int, typer.Option(help="Requests per throughput run.")] = 100_000
    repetitions: Annotated[int, typer.Option(help="Runs of each throughput scenario (medians reported).")] = 3
    naive_events: Annotated[int, typer.Option(help="Requests per run of the (slow) naive peer.")] = 2_000
    warmup: Annotated[
        int, typer.Option(help="Warm-up requests before each timed run (and one for each account they miss).")
    ] = 2_000
    workers: tuple[int, ...] = (1, 2)
    scenarios: Annotated[
        tuple[str, ...], typer.Option(help="Throughput scenarios to run, comma-separated (default: all of them).")
    ] = ()
    # The unrecorded round before the recorded ones (pipeline/bench/rounds.py); off only where the
    # figures are not compared (a test that the bench gives every figure).
    warm_up_round: bool = True
    # A request for each account the warm-up does not name, before each timed throughput run
    # (docs/performance.md#warm-up); off likewise.
    warm_every_account: bool = True
    # The HTTP group.
    http_seconds: Annotated[float, typer.Option(help="Seconds of each HTTP load level.")] = 10.0
    http_rates: Annotated[tuple[float, ...], typer.Option(help="Open-loop arrival rates, req/s, comma-separated.")] = (
        100.0,
        500.0,
        1000.0,
    )
    closed_concurrency: int = 16
    capacity_concurrency: int = 256  # closed loop wide enough to saturate the bridge: its capacity
    overload_factor: float = 3.0
    # The overload run's bridge sheds past this many requests in flight (the default, 2,000, is
    # more than the load generator's 1,024 connections could ever hold open).
    overload_max_in_flight: int = 500
    triton_calls: int = 500
    # Also this open-loop rate against a second worker and bridge that answer callers only once the
    # transaction carrying their result commits (worker.reply_when="committed"), interleaved; 0: not run.
    committed_answer_rate: Annotated[
        float, typer.Option(help="Also this rate with callers answered once committed (reply_when); 0: skip.")
    ] = 500.0
    # Also the closed loop and this open-loop rate against a worker and bridge whose model has a 10%
    # canary, and against one with a 100% shadow (bench/routed_model.py), interleaved; 0: not run.
    routed_http_rate: Annotated[
        float, typer.Option(help="Also this rate (and the closed loop) with a canary, then a shadow; 0: skip.")
    ] = 500.0
    # The soak (run when soak_s > 0).
    soak_s: Annotated[
        float, typer.Option("--soak", help="Also run a worker this many seconds at a steady rate; RSS sampled.")
    ] = 0
    soak_rate: Annotated[float, typer.Option(help="Requests per second during the soak.")] = 1000.0
    soak_dedup_window_s: float = 60.0
    # The state group: a store of this many entries (a full window at ~115 events/s for 24 h), looked
    # up this many times after a restart; a cold rebuild of one partition from this many results; the
    # dedup microbenchmark on states of this many entries, in rounds of batches of 1,024.
    state_entries: Annotated[int, typer.Option(help="Entries of the dedup store the state group fills.")] = 10_000_000
    state_lookups: int = 200_000
    state_rebuild_entries: Annotated[
        int, typer.Option(help="Results the state group's cold rebuild restores from one partition.")
    ] = 500_000
    state_restart_events: Annotated[  # requests scored by the worker restarted on the full store
        int, typer.Option(help="Requests the worker restarted on the state group's store scores.")
    ] = 20_000
    state_micro_entries: Annotated[
        int, typer.Option(help="Entries held by the dict and the store of the dedup microbenchmark.")
    ] = 1_000_000
    state_micro_batches: int = 100
    state_micro_rounds: int = 5
    # The consumer group: one fraud consumer through a backlog of this many results, then fed this
    # many results per second for this long (alert latency).
    consumer_results: Annotated[
        int, typer.Option(help="Results in the backlog the consumer group's fraud consumer reads through.")
    ] = 200_000
    consumer_rate: Annotated[float, typer.Option(help="Results/s fed to the fraud consumer for its alert latency.")] = (
        1000.0
    )
    consumer_seconds: Annotated[float, typer.Option(help="Seconds of that steady feed.")] = 30.0
    # The replay group: `pipeline replay` publishing a Parquet file of this many requests; scoring
    # this many of them with a backfill worker; the live HTTP p99 at this rate (for http_seconds)
    # with and without a replay of this many requests.
    replay_events: Annotated[int, typer.Option(help="Requests in the Parquet file the replay group publishes.")] = (
        1_000_000
    )
    replay_scored_events: Annotated[
        int, typer.Option(help="Of those, how many a backfill worker scores (published → scored).")
    ] = 200_000
    replay_live_events: int = 100_000
    replay_http_rate: float = 100.0
    # The burst group: this many requests at once into an idle pipeline, drained by one worker, by
    # burst_max_workers (None: the CPUs), and by `pipeline scale` from one (at most burst_max_workers,
    # else its own default, the CPUs).
    burst_events: Annotated[int, typer.Option(help="Requests in the burst group's burst.")] = 300_000
    burst_max_workers: Annotated[
        int | None, typer.Option(help="The burst group's fixed maximum, and the supervisor's top (default: the CPUs).")
    ] = None


def groups(only: str) -> set[str]:
    """The scenario groups `--only` names (comma-separated); an unknown one is a usage error."""
    chosen = {g.strip() for g in only.split(",") if g.strip()}
    if unknown := chosen - set(GROUPS):
        raise typer.BadParameter(f"unknown scenario group(s): {', '.join(sorted(unknown))}", param_hint="--only")
    return chosen


def check_scenarios(options: Options) -> None:
    """The throughput scenarios `--scenarios` names exist; an unknown one is a usage error."""
    known = [name for name, _ in throughput_scenarios(options.workers)]
    if unknown := [name for name in options.scenarios if name not in known]:
        raise typer.BadParameter(
            f"unknown throughput scenario(s): {', '.join(unknown)} (one of {', '.join(known)})",
            param_hint="--scenarios",
        )


def command(run: Callable[..., None]) -> Callable[..., None]:
    """`run(options, **own)` as a typer command: every option of `Options`, then `run`'s own parameters;
    `run` gets the former as one `Options`."""
    own = [p.replace(kind=_KEYWORD) for p in list(inspect.signature(run, eval_str=True).parameters.values())[1:]]
    declared = _declared()

    @functools.wraps(run)
    def given(**values: Any) -> None:
        chosen = {name: _parsed(hint, values.pop(name)) for name, (_, hint) in declared.items()}
        run(Options(**chosen), **values)

    parameters = [_parameter(field, hint) for field, hint in declared.values()]
    given.__signature__ = inspect.Signature([*parameters, *own])  # type: ignore[attr-defined]
    return given


def _declared() -> dict[str, tuple[Field[Any], Any]]:
    """Each field of `Options` that is an option of the command, with its type (the option in it)."""
    hints = typing.get_type_hints(Options, include_extras=True)
    return {f.name: (f, hints[f.name]) for f in fields(Options) if typing.get_origin(hints[f.name]) is Annotated}


def _parameter(field: Field[Any], hint: Any) -> inspect.Parameter:
    """The command's parameter for a field, as typer reads it: a tuple as comma-separated text."""
    kind, option = typing.get_args(hint)
    default: Any = field.default
    if typing.get_origin(kind) is tuple:
        hint, default = Annotated[str, option], ",".join(f"{value:g}" for value in default)
    return inspect.Parameter(field.name, _KEYWORD, default=default, annotation=hint)


def _parsed(hint: Any, value: Any) -> Any:
    """A value of the command's back to its field's type: comma-separated text to a tuple."""
    kind = typing.get_args(hint)[0]
    if typing.get_origin(kind) is not tuple:
        return value
    item = typing.get_args(kind)[0]
    return tuple(item(part.strip()) for part in value.split(",") if part.strip())
