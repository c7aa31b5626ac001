"""The Grafana dashboards (deploy/grafana/dashboards/), checked offline: each validates against
Grafana's dashboard schema (deploy/schemas/grafana/), every query names only metrics the pipeline
or Triton exports, the panels lie on the grid without overlapping, and the provisioning files point
Grafana at them and at Prometheus. That every query returns data from a running stack:
tests/integration/test_observability.py."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from pipeline.settings import PROJECT_ROOT
from tests.unit.deploy.promql import GRAFANA_MACROS, TRITON, dashboards, exported, metric_names, panel_queries, panels

SCHEMA = PROJECT_ROOT / "deploy" / "schemas" / "grafana" / "dashboard.schema.json"
PROVISIONING = PROJECT_ROOT / "deploy" / "grafana" / "provisioning"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def test_the_three_dashboards_are_there_with_distinct_uids():
    found = dashboards()
    assert set(found) == {"pipeline", "rollout", "consumers"}
    assert len({d["uid"] for d in found.values()}) == 3


@pytest.mark.parametrize("name", ["pipeline", "rollout", "consumers"])
def test_each_dashboard_validates_against_grafanas_schema(name):
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(dashboards()[name])


def test_a_misspelt_panel_key_fails_the_schema():
    broken = dashboards()["pipeline"]
    next(panels(broken))["titel"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(broken)


@pytest.mark.parametrize("query", list(panel_queries()), ids=lambda q: f"{q[0]}:{q[1]}")
def test_every_query_reads_only_exported_metrics_and_known_macros(query):
    _, title, expr = query
    named = metric_names(expr)
    assert named, expr
    unknown = named - exported() - TRITON
    assert not unknown, f"{title!r} reads {sorted(unknown)}, which nothing exports"
    assert set(re.findall(r"\$\w+", expr)) <= set(GRAFANA_MACROS), expr


def test_every_panel_has_a_title_a_description_and_the_dashboards_data_source():
    for name, dashboard in dashboards().items():
        [variable] = dashboard["templating"]["list"]
        assert (variable["name"], variable["type"], variable["query"]) == ("datasource", "datasource", "prometheus")
        for panel in panels(dashboard):
            assert panel["title"] and panel["description"], (name, panel.get("title"))
            assert panel["datasource"] == DATASOURCE and all(t["datasource"] == DATASOURCE for t in panel["targets"])


def test_the_panels_lie_on_the_grid_without_overlapping():
    for name, dashboard in dashboards().items():
        taken: set[tuple[int, int]] = set()
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, (name, panel["title"])
            columns, rows = range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
            cells = {(x, y) for x in columns for y in rows}
            assert not cells & taken, (name, panel["title"])
            taken |= cells


def test_provisioning_loads_the_dashboards_folder_and_the_variables_default_data_source():
    [source] = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    for dashboard in dashboards().values():
        assert dashboard["templating"]["list"][0]["current"]["value"] == source["uid"]
    [provider] = yaml.safe_load((PROVISIONING / "dashboards" / "pipeline.yml").read_text())["providers"]
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
