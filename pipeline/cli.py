"""The `pipeline` command."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.bench import options as bench_options
from pipeline.contract import ERROR_CODES
from pipeline.errors import PipelineError
from pipeline.replay import command as replay_command
from pipeline.settings import Settings, get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Streaming inference pipeline.")
topics_app = typer.Typer(no_args_is_help=True, help="Kafka topics of the contract.")
models_app = typer.Typer(
    no_args_is_help=True,
    help="Train models, and change which version scores events (docs/model.md#versions-and-rollouts).",
)
features_app = typer.Typer(no_args_is_help=True, help="Feast feature data.")
dlq_app = typer.Typer(no_args_is_help=True, help="The dead-letter topic.")
stack_app = typer.Typer(no_args_is_help=True, help="The local stack: Kafka, Triton, worker, gateway.")
consumers_app = typer.Typer(no_args_is_help=True, help="Consumers of the results: fraud alerts, drift.")
app.add_typer(topics_app, name="topics")
app.add_typer(models_app, name="models")
app.add_typer(features_app, name="features")
app.add_typer(stack_app, name="stack")
app.add_typer(dlq_app, name="dlq")
app.add_typer(consumers_app, name="consumers")
app.add_typer(replay_command.app, name="replay")


def _configure_logging() -> None:
    from pipeline import log

    log.configure(get_settings())


def _trace(settings: Settings, service: str) -> None:
    """OpenTelemetry for this process, when PIPELINE_TRACING__ENABLED (docs/operations.md#traces)."""
    from pipeline import tracing

    tracing.setup(settings.tracing, service)


def _permitted(settings: Any, *components: str) -> None:
    from pipeline.kafka import preflight

    preflight.check(settings, *components)


@topics_app.command("apply")
def topics_apply() -> None:
    """Create the contract's topics (idempotent: a second run changes nothing)."""
    from pipeline import topics
    from pipeline.kafka import durability, reach

    reach.check(get_settings())  # a refused password or certificate said at once, not after a timeout
    report = topics.apply(get_settings())
    for name in report.created:
        typer.echo(f"created   {name}")
    for name in report.grown:
        typer.echo(f"grown     {name}")
    for name in report.unchanged:
        typer.echo(f"unchanged {name}")
    durability.check(get_settings(), [spec.name for spec in topics.load_specs(get_settings())])


@topics_app.command("acls")
def topics_acls(
    apply: Annotated[bool, typer.Option("--apply", help="Create them on the cluster (as an admin principal).")] = False,
    principal: Annotated[
        list[str] | None,
        typer.Option(help="COMPONENT=PRINCIPAL: the principal a component runs as (default User:pipeline-COMPONENT)."),
    ] = None,
    strimzi: Annotated[
        bool, typer.Option("--strimzi", help="Print them as the ACLs of Strimzi KafkaUsers (YAML), by user.")
    ] = False,
) -> None:
    """The ACLs each component needs, and no more, under its own principal (docs/security.md#acls)."""
    from pipeline.kafka import acls

    try:
        names = acls.parse_principals(principal or [])
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--principal") from e
    settings = get_settings()
    recipe = acls.recipe(settings, names)
    if strimzi:
        import yaml

        try:
            users = acls.strimzi_users(recipe)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--principal") from e
        typer.echo(yaml.safe_dump({"users": users}, sort_keys=False), nl=False)
        return
    for component, (who, granted) in zip(acls.COMPONENTS, recipe.items(), strict=True):
        typer.echo(f"{who}  # {acls.COMPONENTS[component]}")
        for grant in granted:
            typer.echo(f"  ALLOW {grant.describe()}")
    if apply:
        from pipeline.kafka import access, reach

        reach.check(settings)
        typer.echo(f"applied {access.apply(settings, recipe)} ACLs")


@models_app.command("train")
def models_train(
    model: Annotated[str | None, typer.Argument(help="fraud_scorer or anomaly_detector; default: both.")] = None,
    force: Annotated[bool, typer.Option(help="Train the next version even when the model has one.")] = True,
    repository: Annotated[Path | None, typer.Option(help="Triton model repository.")] = None,
) -> None:
    """Train models on synthetic data and export each as its next version in the Triton model repository."""
    import torch

    from pipeline.models import train

    settings = get_settings()
    repo = repository or settings.triton.model_repository
    if model is not None and model not in train.MODELS:
        raise typer.BadParameter(f"unknown model {model!r}: one of {', '.join(train.MODELS)}", param_hint="MODEL")
    torch.set_num_threads(2)
    for name in [model] if model else train.MODELS:
        if not force and train.is_trained(repo, name):
            typer.echo(f"{name} already has a version in {repo}/{name} (use --force to train the next)")
            continue
        report = train.train_model(name, repo, accounts=settings.feast.accounts, devices=settings.feast.devices)
        typer.echo(train.describe(name, report))


_By = Annotated[str, typer.Option(help="Who makes the change (default: user@host).")]
_Why = Annotated[str, typer.Option(help="Why, kept in the routing history.")]
_Canary = Annotated[float | None, typer.Option(help="Share of all events the candidate scores, in [0, 1].")]
_Shadow = Annotated[float | None, typer.Option(help="Share of the stable arm's events it also scores, in [0, 1].")]


def _rollout(action: Callable[[Any], Any]) -> Any:
    from pipeline.models.rollout import Rollout

    _permitted(get_settings(), "models")
    rollout = Rollout(get_settings(), say=typer.echo)
    try:
        return action(rollout)
    finally:
        rollout.close()


def _routed(routing: Any) -> None:
    from pipeline.models.routing_log import describe_routing

    typer.echo(f"{routing.model}: {describe_routing(routing)}")


@models_app.command("serve")
def models_serve(
    model: Annotated[
        list[str] | None, typer.Argument(help="The models (default: every model of the repository).")
    ] = None,
) -> None:
    """Load each model's routed versions in Triton (explicit model control starts with none); a model
    never routed gets its highest version on disk as its first stable one. Run once Triton is up."""

    served = _rollout(lambda rollout: rollout.serve(model or None))
    for routing in served.values():
        _routed(routing)


@models_app.command("publish")
def models_publish(
    model: Annotated[str, typer.Argument(help="The model.")],
    version: Annotated[str, typer.Argument(help="Its version to load beside the stable one, as the candidate.")],
    canary: _Canary = None,
    shadow: _Shadow = None,
    by: _By = "",
    why: _Why = "",
) -> None:
    """Load a version in Triton beside the stable one and make it the candidate (no events until shared)."""
    from pipeline.models.rollout import operator

    def publish(rollout: Any) -> Any:
        routing = rollout.publish(model, version, by or operator(), why)
        if canary is not None or shadow is not None:
            routing = rollout.share(model, canary, shadow, by or operator(), why)
        return routing

    _routed(_rollout(publish))


@models_app.command("share")
def models_share(
    model: Annotated[str, typer.Argument(help="The model.")],
    canary: _Canary = None,
    shadow: _Shadow = None,
    by: _By = "",
    why: _Why = "",
) -> None:
    """Set the candidate's canary and shadow shares (events by a stable hash of their event_id)."""
    from pipeline.models.rollout import operator

    _routed(_rollout(lambda rollout: rollout.share(model, canary, shadow, by or operator(), why)))


@models_app.command("promote")
def models_promote(model: Annotated[str, typer.Argument(help="The model.")], by: _By = "", why: _Why = "") -> None:
    """Make the candidate the stable version (the old stable is unloaded, and kept for rollback)."""
    from pipeline.models.rollout import operator

    _routed(_rollout(lambda rollout: rollout.promote(model, by or operator(), why)))


@models_app.command("rollback")
def models_rollback(model: Annotated[str, typer.Argument(help="The model.")], by: _By = "", why: _Why = "") -> None:
    """Drop the candidate; without one, return to the stable version before this one."""
    from pipeline.models.rollout import operator

    _routed(_rollout(lambda rollout: rollout.rollback(model, by or operator(), why)))


@models_app.command("history")
def models_history(model: Annotated[str, typer.Argument(help="The model.")]) -> None:
    """Every routing change of a model: when, by whom, what and why."""
    from pipeline.models import listing, routing_log

    _permitted(get_settings(), "models")
    history = routing_log.read(get_settings())
    changes = history.changes.get(model, [])
    if not changes:
        typer.echo(f"{model}: no routing changes")
        return
    typer.echo(listing.table(listing.history_rows(changes, history.skipped.get(model, []))))


@models_app.command("compare")
def models_compare(
    model: Annotated[str, typer.Argument(help="The model.")],
    version: Annotated[str | None, typer.Option(help="The shadowed version (default: the latest).")] = None,
    output: Annotated[Path | None, typer.Option(help="Also write the figures here, as JSON.")] = None,
) -> None:
    """The candidate's shadow results against the live results of the same events: agreement,
    label flips, score shift."""
    import orjson

    from pipeline.models.shadow_report import shadow_comparison

    _permitted(get_settings(), "models")
    comparison = shadow_comparison(get_settings(), model, version)
    typer.echo(comparison.table())
    if output is not None:
        output.write_bytes(orjson.dumps(comparison.to_json(), option=orjson.OPT_INDENT_2) + b"\n")


@models_app.command("list")
def models_list() -> None:
    """Each model's versions: Triton's state, role (stable, candidate with its shares), metrics."""
    from pipeline.inference.repository import TritonRepository, model_names
    from pipeline.models import listing, routing_log, versions

    settings = get_settings()
    repository = settings.triton.model_repository
    history = routing_log.read(settings)
    triton = TritonRepository(settings.triton, timeout_s=10)
    try:
        index = triton.index()
    finally:
        triton.close()
    rows = []
    for model in model_names(repository):
        states = {v.version: v.state for v in index.get(model, [])}
        rows += listing.version_rows(model, versions.versions(repository, model), states, history.routing(model))
    typer.echo(listing.table(rows) or f"no model versions in {repository}")


@features_app.command("apply")
def features_apply(force: Annotated[bool, typer.Option(help="Regenerate and reload.")] = False) -> None:
    """Generate account aggregates, `feast apply`, and materialise them into the online store."""
    from pipeline.features import demo_data

    settings = get_settings()
    done = demo_data.apply(settings.feast.repo_path, settings.feast.accounts, settings.feast.devices, force=force)
    typer.echo("features: applied and materialised" if done else "features: online store already loaded")


@dlq_app.command("redrive")
def dlq_redrive(
    code: Annotated[list[str] | None, typer.Option(help="Only dead letters with this error code (repeatable).")] = None,
    since: Annotated[datetime | None, typer.Option(help="Only dead letters written at or after this time.")] = None,
    until: Annotated[datetime | None, typer.Option(help="Only dead letters written before this time.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Count what would be re-published; publish nothing.")] = False,
) -> None:
    """Re-publish dead letters to the requests topic (events scored since are not scored twice)."""
    from pipeline.replay import redrive

    unknown = set(code or ()) - set(ERROR_CODES)
    if unknown:
        raise typer.BadParameter(f"unknown code(s) {sorted(unknown)}; codes are {', '.join(ERROR_CODES)}")
    selection = redrive.Selection(frozenset(code or ()), _aware(since), _aware(until))
    _permitted(get_settings(), "redrive")
    count = redrive.redrive(get_settings(), selection, dry_run=dry_run)
    typer.echo(f"{'would re-publish' if dry_run else 're-published'} {count} dead letter(s)")


def _aware(when: datetime | None) -> datetime | None:
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


@app.command()
def worker(
    backfill: Annotated[
        bool, typer.Option(help="Score replayed requests (pipeline replay), behind the live workers.")
    ] = False,
) -> None:
    """Run a scoring worker until stopped."""
    from pipeline.worker import loop as worker_module

    _configure_logging()
    _permitted(get_settings(), "backfill" if backfill else "worker")
    _trace(get_settings(), "pipeline-backfill-worker" if backfill else "pipeline-worker")
    worker_module.run(get_settings(), backfill=backfill)


_GroupId = Annotated[str, typer.Option(help="Kafka group (and prefix of its tables' changelogs).")]
_FromBeginning = Annotated[
    bool, typer.Option(help="Without committed offsets, start at the topics' start, not their end.")
]


@consumers_app.command("fraud")
def consumers_fraud(group_id: _GroupId = "", from_beginning: _FromBeginning = False) -> None:
    """Fraud alerts from the results, to fraud.alerts, until stopped (SIGTERM: offsets committed, exit 0)."""
    _run_consumer("fraud", group_id, from_beginning)


@consumers_app.command("anomaly")
def consumers_anomaly(group_id: _GroupId = "", from_beginning: _FromBeginning = False) -> None:
    """Anomaly alerts from the anomaly detector's results, one per device episode, to anomaly.alerts."""
    _run_consumer("anomaly", group_id, from_beginning)


@consumers_app.command("guard")
def consumers_guard(group_id: _GroupId = "", from_beginning: _FromBeginning = False) -> None:
    """The rollout guard: rolls a model's canary back when it fails, slows or scores unlike the stable arm."""
    _run_consumer("guard", group_id, from_beginning)


@consumers_app.command("drift")
def consumers_drift(group_id: _GroupId = "", from_beginning: _FromBeginning = False) -> None:
    """Drift of request features and scores against the training reference: gauges, drift.alerts."""
    _run_consumer("drift", group_id, from_beginning)


def _run_consumer(name: str, group_id: str, from_beginning: bool) -> None:
    """Build the Faust app of consumer `name` (group default pipeline-NAME) and run it until stopped."""
    from pipeline import topics
    from pipeline.consumers import anomaly, drift, fraud, guard
    from pipeline.consumers import app as consumer_app
    from pipeline.kafka import acls

    _configure_logging()
    settings = get_settings()
    if group_id:
        settings = settings.updated(consumers={"group_id": group_id})
    _permitted(settings, name)
    if name in ("fraud", "anomaly"):
        output = settings.topics.alerts if name == "fraud" else settings.topics.anomaly_alerts
        partitions = consumer_app.check_partitions(settings, output)
    elif name == "guard":
        partitions = topics.partition_count(settings, settings.topics.results)
    else:
        drift.check_reference(settings)
        partitions = topics.partition_count(settings, settings.topics.requests)
    group = acls.consumer_group(settings, name)
    _trace(settings, f"pipeline-{name}")
    faust_app = consumer_app.make_app(settings, group, from_beginning, partitions)
    if name == "fraud":
        topics.apply(settings, fraud.install(faust_app, settings, partitions))
    elif name == "anomaly":
        topics.apply(settings, anomaly.install(faust_app, settings, partitions))
    elif name == "guard":
        guard.install(faust_app, settings)
    else:
        drift.install(faust_app, settings)
    consumer_app.run(faust_app, settings, name)


@app.command()
def gateway() -> None:
    """Run the HTTP bridge until stopped."""
    from pipeline.gateway import app as gateway_app

    _configure_logging()
    _permitted(get_settings(), "bridge")
    _trace(get_settings(), "pipeline-gateway")
    gateway_app.run(get_settings())


@app.command()
def demo(
    events: Annotated[int, typer.Option(help="Requests in the demo stream.")] = 20_000,
    keep_running: Annotated[bool, typer.Option(help="Leave the stack running afterwards.")] = False,
) -> None:
    """Start the whole stack, publish a demo stream, print a summary and stop."""
    from pipeline.local import demo as demo_module

    _configure_logging()
    demo_module.run(get_settings(), events=events, keep_running=keep_running)


@app.command()
@bench_options.command  # every option of bench_options.Options first
def bench(
    options: bench_options.Options,
    only: Annotated[str, typer.Option(help=f"Scenario groups to run: {bench_options.ALL}")] = bench_options.ALL,
    out: Annotated[Path, typer.Option(help="Folder for bench.json and bench.png.")] = Path("bench-results"),
) -> None:
    """Benchmark the pipeline beside its peers and the machine's limit, in one run; table, JSON, PNG."""
    from pipeline.bench import report, runner

    _configure_logging()
    bench_options.check_scenarios(options)
    figures = runner.run(get_settings(), options, bench_options.groups(only))
    report.write(figures, out)
    typer.echo(report.table(figures))
    typer.echo(f"\nwrote {out / 'bench.json'} and {out / 'bench.png'}")


@app.command("bench-peer", hidden=True)
def bench_peer(kind: str) -> None:
    """One of the bench's peers (pipeline/bench/peers.py; `request-response`, the HTTP bridge's:
    pipeline/bench/request_response.py); started by `pipeline bench`."""
    _configure_logging()
    if kind == "request-response":
        from pipeline.bench import request_response

        request_response.run(get_settings())
        return
    from pipeline.bench import peers

    peers.run(get_settings(), kind)


@app.command("bench-state", hidden=True)
def bench_state(
    role: str,
    directory: Path,
    entries: Annotated[int, typer.Option(help="Entries written, or held by the store it opens.")] = 0,
    lookups: Annotated[int, typer.Option(help="serve: lookups after the first.")] = 0,
    batches: Annotated[int, typer.Option(help="micro: batches per round.")] = 0,
    rounds: Annotated[int, typer.Option(help="micro: interleaved rounds.")] = 0,
) -> None:
    """One process of the bench's state group (see pipeline/bench/state.py); started by `pipeline bench`."""
    from pipeline.bench import state

    _configure_logging()
    options = {"entries": entries, "lookups": lookups, "batches": batches, "rounds": rounds}
    state.run_role(role, directory, options, get_settings())


@app.command()
def scale(
    serve: Annotated[
        bool, typer.Option(help="Run no workers: serve the desired count over HTTP (GET /desired), for KEDA.")
    ] = False,
    min_workers: Annotated[
        int | None, typer.Option(min=1, help="Fewest workers (PIPELINE_SCALING__MIN_WORKERS).")
    ] = None,
    max_workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Most workers (PIPELINE_SCALING__MAX_WORKERS; default: the CPUs it may use, or with --serve "
            "the partitions).",
        ),
    ] = None,
    drain_s: Annotated[
        float | None,
        typer.Option(min=0.1, help="Drain a backlog within this many seconds (PIPELINE_SCALING__DRAIN_S)."),
    ] = None,
) -> None:
    """Scale the workers on their lag until stopped: run them (or, --serve, say how many there should be)."""
    from pipeline.scaling import supervisor

    _configure_logging()
    given = {"min_workers": min_workers, "max_workers": max_workers, "drain_s": drain_s}
    settings = get_settings().updated(scaling={k: v for k, v in given.items() if v is not None})
    most = settings.scaling.max_workers
    if most is not None and settings.scaling.min_workers > most:
        raise typer.BadParameter("--min-workers is above --max-workers")
    _permitted(settings, *(["scale"] if serve else ["scale", "worker"]))  # its workers run as it does
    supervisor.run(settings, serve=serve)


@stack_app.command("up")
def stack_up() -> None:
    """Start Kafka, Triton, topics, features, a worker and the gateway, and leave them running."""
    from pipeline.local import stack

    _configure_logging()
    stack.LocalStack.from_settings(get_settings()).up()


@stack_app.command("down")
def stack_down() -> None:
    """Stop what `stack up` started."""
    from pipeline.local import stack

    stack.LocalStack.from_settings(get_settings()).down()


def main() -> None:
    from confluent_kafka import KafkaException

    try:
        app()
    except PipelineError as e:
        typer.echo(f"error: {e.code}: {e.message}", err=True)
        raise SystemExit(1) from e
    except KafkaException as e:
        typer.echo(f"error: {_kafka_failure(e)}", err=True)
        raise SystemExit(1) from e


def _kafka_failure(failed: Exception) -> str:
    """A Kafka call that failed, in one line: why the cluster cannot be reached, when it cannot
    (a wrong password, an untrusted certificate), else the call's own error."""
    from pipeline.kafka import reach

    settings = get_settings()
    try:
        reach.check(settings, timeout_s=5)
    except PipelineError as unreachable:
        return unreachable.message
    return f"kafka at {settings.kafka.bootstrap_servers}: {failed.args[0].str()}"
