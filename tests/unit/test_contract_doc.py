"""docs/contract.md is the whole public contract: it names every topic, header, error code, CLI verb and
bridge route the code defines, and stands on its own (no reference to a file outside the repository)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from pipeline import contract, errors
from pipeline.settings import PROJECT_ROOT, Settings, TopicSettings

DOC_PATH = PROJECT_ROOT / "docs" / "contract.md"
DOC = DOC_PATH.read_text(encoding="utf-8")


SPANS = re.findall(r"`([^`\n]+)`", DOC)


def named(name: str) -> bool:
    """The doc names `name` in a code span, alone or as a whole word of it (`GET /healthz`, `replay
    diff ID`): `inference.requests.backfill` does not name `inference.requests`, nor
    `/v1/predict:batch` `/v1/predict`."""
    word = re.compile(rf"(?<![\w.\-/:]){re.escape(name)}(?![\w.\-/:])")
    return any(word.search(span) for span in SPANS)


def missing(names: set[str]) -> list[str]:
    return sorted(name for name in names if not named(name))


def test_every_default_topic_is_named() -> None:
    defaults = Settings.model_fields["topics"].default  # not the environment's: the defaults
    assert isinstance(defaults, TopicSettings)
    topics = defaults.model_dump(exclude={"definitions"})
    assert len(topics) >= 11
    assert missing(set(topics.values())) == []


def header_names() -> set[str]:
    """The module-level string constants of `pipeline.contract`: its header names."""
    return {
        value
        for name, value in vars(contract).items()
        if name.isupper() and not name.startswith("_") and isinstance(value, str)
    }


def test_every_header_is_named() -> None:
    headers = header_names()
    assert {"correlation-id", "reply-to", "deadline", "answer-to", "reply-kind", "replay-id"} <= headers
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*", h) for h in headers), "constants that are not header names"
    assert missing(headers) == []


def subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from subclasses(sub)


def error_classes() -> set[type[errors.PipelineError]]:
    return {errors.PipelineError, *subclasses(errors.PipelineError)}


def declared_codes() -> dict[str, str]:
    """`code = "..."` in any class body of the package, imported or not: code → where."""
    found = {}
    for path in sorted((PROJECT_ROOT / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            for statement in node.body:
                targets = statement.targets if isinstance(statement, ast.Assign) else []
                value = statement.value if isinstance(statement, ast.Assign) else None
                if any(isinstance(t, ast.Name) and t.id == "code" for t in targets) and isinstance(value, ast.Constant):
                    found[str(value.value)] = f"{path.relative_to(PROJECT_ROOT)}:{node.name}"
    return found


def test_every_error_code_is_named() -> None:
    classes = [c for c in error_classes() if c.__module__.startswith("pipeline.")]
    codes = {c.code for c in classes}
    assert {"invalid_json", "invalid_request", "deadline_exceeded", "internal_error"} <= codes
    assert missing(codes) == []
    assert set(contract.ERROR_CODES) <= codes, "a dead letter's code without an error class"


def test_every_error_code_declared_anywhere_in_the_package_is_named() -> None:
    codes = declared_codes()
    assert "configuration_error" in codes
    assert {code: codes[code] for code in missing(set(codes))} == {}


def cli_commands() -> Iterator[tuple[str, Any]]:
    """(path, command) for every command and sub-command of `pipeline`, from the click tree."""
    from pipeline.cli import app

    def walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
        for name, sub in (getattr(command, "commands", None) or {}).items():
            yield " ".join((*path, name)), sub
            yield from walk(sub, (*path, name))

    yield from walk(typer.main.get_command(app), ())


def test_every_cli_command_is_named() -> None:
    commands = dict(cli_commands())
    public = {path for path, command in commands.items() if not command.hidden}
    assert {"worker", "topics apply", "replay", "replay diff", "consumers anomaly"} <= public
    assert missing(public) == []
    # Hidden helpers are named too, as outside the contract.
    assert missing(set(commands) - public) == []


def bridge_routes() -> set[str]:
    """Every route path of the HTTP bridge's FastAPI app, built without starting it (no Kafka)."""
    from pipeline.gateway.app import create_app

    return {route.path for route in create_app(Settings()).app.routes}


def test_every_bridge_route_is_named() -> None:
    routes = bridge_routes()
    assert {"/v1/predict", "/v1/predict:batch", "/healthz", "/readyz", "/metrics"} <= routes
    assert missing(routes) == []


@pytest.mark.parametrize("reference", ["../shared", "CONTRACT.md", "/work/"])
def test_the_doc_stands_alone(reference: str) -> None:
    assert reference not in DOC


def test_its_links_stay_inside_the_repository() -> None:
    for target in re.findall(r"\]\(([^)#\s]+)", DOC):
        if re.match(r"[a-z]+://", target):
            continue
        resolved = (DOC_PATH.parent / target).resolve()
        assert resolved.is_relative_to(PROJECT_ROOT), target
        assert resolved.exists(), target


def test_its_anchors_exist() -> None:
    headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", DOC, flags=re.MULTILINE)}
    for anchor in re.findall(r"\]\(#([^)]+)\)", DOC):
        assert anchor in headings, anchor


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def test_the_readme_points_at_it() -> None:
    readme = Path(PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Contract", 1)[1].split("\n## ", 1)[0]
    assert "(docs/contract.md)" in section
