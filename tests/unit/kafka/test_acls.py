from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.kafka import access, acls
from pipeline.kafka.acls import Grant
from pipeline.settings import Settings


def test_each_component_has_a_principal_of_its_own_unless_the_operator_names_one():
    recipe = acls.recipe(Settings(), {"worker": "svc-scoring", "bridge": "User:CN=bridge,O=bank"})
    assert list(recipe)[:3] == ["User:svc-scoring", "User:pipeline-backfill", "User:CN=bridge,O=bank"]
    assert len(set(recipe)) == len(acls.COMPONENTS) == 11


def test_the_worker_may_read_its_requests_and_write_every_topic_it_answers_to_and_nothing_else():
    settings = Settings().updated(topics={"requests": "bank.req", "results": "bank.res", "dlq": "bank.dlq"})
    topics = {(g.name, g.operation) for g in acls.grants(settings, "worker") if g.resource == "topic"}
    # The topics the contract says a worker writes (docs/contract.md), named as the settings name them.
    writes = {"bank.res", "bank.dlq", "inference.replies", "inference.results.shadow"}
    assert {name for name, op in topics if op == "write"} == writes
    assert {name for name, op in topics if op == "read"} == {"bank.req", "bank.res", "models.routing"}
    assert ("bank.req", "write") not in topics, "a worker never writes requests"


def test_no_grant_reaches_beyond_the_pipelines_own_names():
    settings = Settings()
    for component in acls.COMPONENTS:
        for grant in acls.grants(settings, component):
            assert grant.resource != "cluster" and grant.name not in {"", "*"}, (component, grant)
            # A prefix is a name of the pipeline's own followed by a separator, never a bare word.
            assert grant.pattern == "literal" or grant.name.startswith(("pipeline-", "inference.")), grant


def test_a_consumer_group_set_by_the_operator_renames_its_group_and_its_own_topics():
    settings = Settings().updated(consumers={"group_id": "fraud-eu"})
    granted = acls.grants(settings, "fraud")
    assert Grant("group", "fraud-eu", "read", "prefixed") in granted
    assert Grant("topic", "fraud-eu-", "create", "prefixed") in granted


@pytest.mark.parametrize("given", ["worker", "=User:x", "nosuch=User:x", "worker="])
def test_a_malformed_principal_option_is_named(given):
    with pytest.raises(ValueError, match="COMPONENT=PRINCIPAL"):
        acls.parse_principals([given])


def test_a_binding_is_an_allow_from_any_host_with_the_grants_pattern():
    bound = access.binding("User:pipeline-worker", Grant("transactional_id", "pipeline-worker-", "write", "prefixed"))
    assert (bound.restype.name, bound.name, bound.resource_pattern_type.name) == (
        "TRANSACTIONAL_ID",
        "pipeline-worker-",
        "PREFIXED",
    )
    assert (bound.principal, bound.host, bound.operation.name, bound.permission_type.name) == (
        "User:pipeline-worker",
        "*",
        "WRITE",
        "ALLOW",
    )


def test_topics_acls_prints_the_recipe_and_refuses_a_bad_principal_in_one_line():
    printed = CliRunner().invoke(app, ["topics", "acls", "--principal", "scale=keda"])
    assert printed.exit_code == 0, printed.output
    assert "User:keda  # pipeline scale --serve" in printed.output
    assert "  ALLOW DESCRIBE         group pipeline-worker\n" in printed.output
    refused = CliRunner().invoke(app, ["topics", "acls", "--principal", "scaler=keda"])
    assert refused.exit_code == 2 and "COMPONENT=PRINCIPAL" in refused.output


def test_the_recipe_as_strimzi_users_groups_operations_by_resource():
    recipe = {
        "User:pipeline-worker": [
            acls.Grant("topic", "inference.results", "write"),
            acls.Grant("topic", "inference.results", "describe_configs"),
            acls.Grant("group", "pipeline-worker", "read", "prefixed"),
            acls.Grant("transactional_id", "pipeline-worker", "write", "prefixed"),
        ]
    }
    assert acls.strimzi_users(recipe) == {
        "pipeline-worker": [
            {"resource": {"type": "group", "name": "pipeline-worker", "patternType": "prefix"}, "operations": ["Read"]},
            {
                "resource": {"type": "topic", "name": "inference.results", "patternType": "literal"},
                "operations": ["DescribeConfigs", "Write"],
            },
            {
                "resource": {"type": "transactionalId", "name": "pipeline-worker", "patternType": "prefix"},
                "operations": ["Write"],
            },
        ]
    }


def test_strimzi_users_are_user_principals_only():
    with pytest.raises(ValueError, match="Group:ops"):
        acls.strimzi_users({"Group:ops": []})
