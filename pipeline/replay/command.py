"""`pipeline replay`, `pipeline replay export` and `pipeline replay diff`: the CLI of backfills."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer

from pipeline.errors import ConfigurationError
from pipeline.settings import Settings, get_settings

if TYPE_CHECKING:
    from pipeline.replay.checkpoint import Checkpoint
    from pipeline.replay.publisher import Options, Summary
    from pipeline.replay.sources import Source

app = typer.Typer(help="Re-score history: publish past requests for the backfill workers, export, diff.")

_REPLAY_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # Kafka's legal topic names

Since = Annotated[datetime | None, typer.Option(help="Records of the topic at or after this time (UTC if naive).")]
Until = Annotated[
    datetime | None, typer.Option(help="Records before this time (default: the topic's end when the replay began).")
]
Ranges = Annotated[
    list[str] | None, typer.Option("--range", help="PARTITION:START-END offsets, end exclusive (repeatable).")
]
Topic = Annotated[str | None, typer.Option(help="The topic to read (default: the live requests topic).")]
ReplayId = Annotated[
    str | None, typer.Option(help="Names the replay: its checkpoint, and the scope its events are scored once in.")
]
File = Annotated[Path | None, typer.Option(help="A .jsonl or .parquet file of requests, instead of a topic.")]
ResultsTopic = Annotated[
    str | None,
    typer.Option(
        help="Also put this replay's results here (created when missing), besides inference.results.backfill."
    ),
]
Filters = Annotated[
    list[str] | None,
    typer.Option("--filter", help="FIELD=VALUE on model or an entity key; event_time>=/</... a time (repeatable)."),
]
ModelVersion = Annotated[
    str | None,
    typer.Option(
        help="MODEL:VERSION: score the replayed requests of MODEL with that version (a backtest; it must be "
        "loaded: `pipeline models publish MODEL VERSION` loads it with no share of the live events)."
    ),
]
Rate = Annotated[float | None, typer.Option(min=0.001, help="Publish at most this many events/s.")]
Limit = Annotated[int | None, typer.Option(min=1, help="Publish at most this many requests in this run.")]
DryRun = Annotated[bool, typer.Option(help="Read and validate; count what would be published; publish nothing.")]
Rejects = Annotated[
    Path | None, typer.Option(help="Where invalid rows go (JSON Lines; default replay-<id>.rejects.jsonl).")
]


@app.callback(invoke_without_command=True)
def replay(
    ctx: typer.Context,
    replay_id: ReplayId = None,
    since: Since = None,
    until: Until = None,
    ranges: Ranges = None,
    topic: Topic = None,
    file: File = None,
    results_topic: ResultsTopic = None,
    model_version: ModelVersion = None,
    filter_: Filters = None,
    rate: Rate = None,
    limit: Limit = None,
    dry_run: DryRun = False,
    rejects: Rejects = None,
) -> None:
    """Re-publish past requests, from a topic range or a file, to be scored again into the backfill
    results. Resumable: run it again with the same --replay-id to continue; a finished replay adds nothing."""
    if ctx.invoked_subcommand is not None:
        return
    from pipeline.kafka import preflight
    from pipeline.replay import checkpoint, publisher, selection
    from pipeline.replay.sources import PartitionRange, TopicSource, open_file

    settings = get_settings()
    replay_id = _checked_replay_id(replay_id)
    filters = [selection.parse_filter(f) for f in filter_ or ()]
    if file is not None and (topic or since or until or ranges):
        raise typer.BadParameter("a file, or a topic range (--topic/--since/--until/--range): not both")
    explicit = [PartitionRange.parse(r) for r in ranges or ()]
    pinned = _pinned_version(settings, model_version) if model_version is not None else None
    opened = open_file(file) if file is not None else None  # a bad file fails before the broker is asked
    preflight.check(settings, "replay")  # a missing ACL named now, not midway (docs/security.md#acls)
    previous = checkpoint.latest(settings, replay_id)
    results = _results_topic(settings, results_topic, previous)
    source = opened or TopicSource(
        settings,
        topic or settings.topics.requests,
        _utc(since),
        _utc(until),
        explicit,
        previous.ranges if previous is not None else None,
    )
    options = publisher.Options(
        replay_id=replay_id,
        results_topic=results,
        model_version=pinned,
        filters=filters,
        rate=rate,
        limit=limit,
        dry_run=dry_run,
        rejects=rejects or Path(f"replay-{replay_id}.rejects.jsonl"),
    )
    summary = _publish(settings, source, options, previous)
    _print_summary(summary, dry_run)
    if summary.interrupted:
        raise typer.Exit(130)


def _pinned_version(settings: Settings, asked: str) -> str:
    """`MODEL:VERSION`, checked: a version Triton has loaded and ready."""
    from pipeline.inference.repository import TritonRepository
    from pipeline.models.routing import pinned

    found = pinned(asked.encode())
    if found is None:
        raise typer.BadParameter(f"{asked!r} is not MODEL:VERSION (fraud_scorer:2)", param_hint="--model-version")
    model, version = found
    triton = TritonRepository(settings.triton, timeout_s=10)
    try:
        ready = triton.ready(model, version)
    finally:
        triton.close()
    if not ready:
        raise ConfigurationError(
            f"{model} version {version} is not loaded in Triton: `pipeline models publish {model} {version}` "
            "loads it beside the stable version with no share of the live events"
        )
    return asked


def _checked_replay_id(replay_id: str | None) -> str:
    if replay_id is None:
        raise typer.BadParameter("a replay needs a name: --replay-id (resume it by running it again)")
    if not _REPLAY_ID.match(replay_id):
        raise typer.BadParameter("letters, digits, '.', '_' and '-' only, at most 100", param_hint="--replay-id")
    return replay_id


def _publish(settings: Settings, source: Source, options: Options, previous: Checkpoint | None) -> Summary:
    """The replay's run, its own results topic created first (once the source is known good: a
    refused command leaves no topic behind); the source closed however it ends."""
    from pipeline.replay import publisher

    try:
        if not options.dry_run:
            _create_results_topic(settings, options.results_topic)
        return publisher.run(settings, source, options, previous)
    finally:
        source.close()


@app.command("export")
def export(
    output: Annotated[Path, typer.Option(help="The Parquet file to write (replaced).")],
    since: Since = None,
    until: Until = None,
    ranges: Ranges = None,
    topic: Topic = None,
) -> None:
    """Write a topic range to a Parquet file (requests byte for byte, with where they were)."""
    from pipeline.replay import export as exporting
    from pipeline.replay.sources import PartitionRange, TopicSource

    settings = get_settings()
    if output.suffix != ".parquet":
        raise typer.BadParameter("a .parquet file", param_hint="--output")
    explicit = [PartitionRange.parse(r) for r in ranges or ()]
    source = TopicSource(settings, topic or settings.topics.requests, _utc(since), _utc(until), explicit)
    try:
        written = exporting.export(source, output)
    finally:
        source.close()
    typer.echo(f"exported {written} record(s) to {output}")


@app.command("diff")
def diff(
    replay_id: Annotated[str, typer.Argument(help="The replay to compare with the original results.")],
    output: Annotated[Path | None, typer.Option(help="The JSON file (default replay-<id>.diff.json).")] = None,
) -> None:
    """A replay's results against the original results of the same event_ids."""
    from rich.console import Console
    from rich.table import Table

    from pipeline.replay import checkpoint
    from pipeline.replay import diff as diffing

    settings = get_settings()
    began = checkpoint.latest(settings, replay_id)
    if began is None:
        raise ConfigurationError(f"no replay {replay_id!r}: nothing was published under that id")
    figures = diffing.diff(settings, replay_id, began.results_topic)
    path = output or Path(f"replay-{replay_id}.diff.json")
    path.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    table = Table(title=f"replay {replay_id} against the original results")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in figures.items():
        if name != "replay_id":
            table.add_row(name.replace("_", " "), _cell(value))
    Console().print(table)
    typer.echo(f"written to {path}")


def _print_summary(summary: Summary, dry_run: bool) -> None:
    state = summary.checkpoint
    if summary.already_done:
        typer.echo(
            f"replay {state.replay_id} is complete: {state.counts['published']} published of "
            f"{state.counts['read']} read; nothing more to publish"
        )
        return
    verb = "would publish" if dry_run else "published"
    reasons = ", ".join(f"{code} {n}" for code, n in sorted(state.rejected.items()))
    typer.echo(
        f"replay {state.replay_id}: read {summary.read}, {verb} {summary.published}, "
        f"skipped {summary.rejected} invalid{f' ({reasons})' if reasons else ''}, filtered out {summary.filtered}, "
        f"in {summary.seconds:.1f} s ({summary.per_s:,.0f} events/s)"
    )
    if summary.rejects is not None:
        typer.echo(f"invalid rows written to {summary.rejects}")
    if dry_run:
        return
    if state.done:
        typer.echo(f"complete: {state.counts['published']} published in all; results on {state.results_topic}")
    else:
        left = state.remaining()
        typer.echo(f"stopped with {left} row(s) left: run the same command again to continue")


def _results_topic(settings: Settings, asked: str | None, previous: Checkpoint | None) -> str:
    """Where this replay's results go: the backfill results topic, or a topic of its own, which the
    backfill workers write each result to as well. Never one of the contract's topics. A replay
    resumed keeps the topic it began with."""
    from pipeline import topics

    if previous is not None:
        if asked is not None and asked != previous.results_topic:
            raise ConfigurationError(
                f"--results-topic {asked}: replay {previous.replay_id} writes its results to "
                f"{previous.results_topic}; resume it with that topic, or start a new replay id"
            )
        asked = previous.results_topic
    default = settings.topics.backfill_results
    if asked is None or asked == default:
        return default
    if not _TOPIC_NAME.match(asked) or asked in {".", ".."} or asked in {s.name for s in topics.load_specs(settings)}:
        raise typer.BadParameter(
            f"{asked!r} cannot take a replay's results (a topic of the pipeline's own, or no topic name)",
            param_hint="--results-topic",
        )
    return asked


def _create_results_topic(settings: Settings, name: str) -> None:
    """A replay's own results topic, created like the backfill results when missing; an existing
    one is left as it is (never grown)."""
    from pipeline import topics

    default = settings.topics.backfill_results
    if name == default or name in topics.admin_client(settings).list_topics(timeout=30).topics:
        return
    spec = next(s for s in topics.load_specs(settings) if s.name == default)
    topics.apply(settings, [replace(spec, name=name)])


def _utc(when: datetime | None) -> datetime | None:
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


def _cell(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)
