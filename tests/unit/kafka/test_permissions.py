from __future__ import annotations

from pydantic import SecretStr

from pipeline.kafka.acls import Grant
from pipeline.kafka.permissions import lacking, refusal
from pipeline.settings import Settings

READ, WRITE = Grant("topic", "req", "read"), Grant("topic", "res", "write")


def test_a_grant_is_lacking_only_where_the_cluster_said_which_operations_are_allowed():
    allowed = {("topic", "req"): {"read", "describe"}, ("topic", "res"): {"describe"}}
    assert lacking([READ, WRITE], allowed) == [WRITE]
    assert lacking([READ, WRITE], {("topic", "res"): None}) == [], "not known: not refused"
    assert lacking([WRITE], {("topic", "res"): {"all"}}) == []


def test_the_refusal_names_the_user_and_the_first_missing_grants_and_never_the_password():
    settings = Settings().updated(kafka={"username": "svc", "password": SecretStr("pw-7731")})
    missing = [Grant("topic", f"t{i}", "write") for i in range(5)]
    line = refusal(settings, "worker", missing)
    assert "user 'svc' is not allowed WRITE on topic t0, WRITE on topic t1, WRITE on topic t2 and 2 more" in line
    assert "which the worker needs" in line and "pw-7731" not in line and "\n" not in line
