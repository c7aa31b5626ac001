"""The bench's options, declared once on `Options`, as the command's (pipeline/bench/options.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from pipeline.bench import options as bench_options
from pipeline.bench.options import Options

app = typer.Typer(add_completion=False)
given: list[tuple[Options, str, Path]] = []


@app.command()
@bench_options.command
def bench(
    options: Options,
    only: Annotated[str, typer.Option(help="Groups.")] = bench_options.ALL,
    out: Annotated[Path, typer.Option(help="Folder.")] = Path("bench-results"),
) -> None:
    given.append((options, only, out))


def _run(*args: str) -> tuple[Options, str, Path]:
    given.clear()
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return given[-1]


def test_without_flags_the_command_gives_the_declared_defaults():
    assert _run() == (Options(), bench_options.ALL, Path("bench-results"))


def test_a_tuple_is_given_as_comma_separated_text_and_an_option_may_have_its_own_name():
    options, only, out = _run(
        "--http-rates", "20, 40.5", "--soak", "6", "--events", "400", "--only", "http", "--out", "x"
    )

    assert (options.http_rates, options.soak_s, options.events) == ((20.0, 40.5), 6.0, 400)
    assert (only, out) == ("http", Path("x"))


def test_only_the_fields_carrying_an_option_are_on_the_command_line():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})

    assert "--http-rates" in result.output and "100,500,1000" in result.output and "--soak " in result.output
    assert "--closed-concurrency" not in result.output and "--workers" not in result.output


def test_the_groups_only_names_and_an_unknown_one_refused():
    assert bench_options.groups(" http,state ,") == {"http", "state"}
    with pytest.raises(typer.BadParameter, match=r"unknown scenario group\(s\): nonsense"):
        bench_options.groups("http,nonsense")


def test_the_scenarios_named_must_be_throughput_scenarios():
    bench_options.check_scenarios(Options(scenarios=("pipeline-1w", "pipeline-1w-shadow100")))
    with pytest.raises(typer.BadParameter, match=r"unknown throughput scenario\(s\): pipeline-9w \(one of "):
        bench_options.check_scenarios(Options(scenarios=("pipeline-1w", "pipeline-9w")))
    options, _, _ = _run("--scenarios", "pipeline-1w, pipeline-1w-canary10")
    assert options.scenarios == ("pipeline-1w", "pipeline-1w-canary10")
