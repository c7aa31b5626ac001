"""The alerting rules in deploy/prometheus/, checked by Debian's promtool (installed by `make setup`):
their syntax, their unit tests (a series that fires each alert and one that does not), and that
every metric they name is one the pipeline or Triton exports."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from pipeline.settings import PROJECT_ROOT, Settings
from tests.unit.deploy.promql import TRITON, exported, metric_names

RULES = PROJECT_ROOT / "deploy" / "prometheus" / "rules.yml"
RULE_TESTS = PROJECT_ROOT / "deploy" / "prometheus" / "rules.test.yml"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make setup` installs Debian's prometheus"
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=RULES.parent)


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_the_rules_are_valid_and_their_unit_tests_pass():
    checked = _promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert {rule["alert"] for rule in _rules()} == tested


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule["alert"])
def test_every_metric_a_rule_reads_is_exported(rule):
    named = metric_names(rule["expr"])
    assert named, rule["expr"]
    unknown = named - exported() - TRITON
    assert not unknown, f"{rule['alert']} reads {sorted(unknown)}, which nothing exports"


def test_the_lag_alert_uses_the_policys_drain_target():
    [lag] = [rule for rule in _rules() if rule["alert"] == "PipelineLagAboveDrainTarget"]
    assert lag["expr"].endswith(f"> {Settings().scaling.drain_s:g}")
