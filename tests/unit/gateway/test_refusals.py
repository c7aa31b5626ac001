"""The bridge's error rules, pure: which content types are JSON, how a body's JSON failure is said."""

from __future__ import annotations

import json

import pytest
from starlette.exceptions import HTTPException

from pipeline.gateway.refusals import from_http_exception, invalid_body, is_json, loads, unsupported_media_type


@pytest.mark.parametrize(
    ("content_type", "json_"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        (" Application/JSON ", True),
        ("application/problem+json", True),
        ("application/jsonp", False),
        ("text/json", False),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("", False),
        (None, False),
    ],
)
def test_json_is_application_json_or_a_json_suffix(content_type, json_):
    assert is_json(content_type) is json_


def test_the_415_names_the_media_type_without_its_parameters_and_at_bounded_length():
    assert unsupported_media_type("text/plain; charset=latin-1").message.startswith("Content-Type text/plain is")
    long = unsupported_media_type("x/" + "y" * 10_000)
    assert long.status == 415 and len(long.message) < 300


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 2000 + b"]" * 2000, "body nests arrays or objects over 1024 levels deep; JSON this deep is not read"),
        (b'{"a": "\xff"}', "body is not valid UTF-8 (byte offset 7); JSON must be UTF-8"),
        (b"", "body is empty; expected a JSON object"),
        (b'{"a": 1} x', "body is not JSON: unexpected content after document (line 1, column 10)"),
        (b'{\n"a": }', "body is not JSON: unexpected character, expected a JSON value (line 2, column 6)"),
    ],
)
def test_a_body_that_is_not_json_raises_the_error_fastapi_reads_saying_why(body, message):
    with pytest.raises(json.JSONDecodeError) as raised:
        loads(body)
    assert raised.value.msg == message


def test_nesting_up_to_the_limit_is_read():
    assert loads(b"[" * 1024 + b"]" * 1024) is not None


def test_validation_errors_map_to_codes():
    not_dict = [{"type": "model_attributes_type", "loc": ("body",), "msg": "Input should be a valid dictionary"}]
    assert invalid_body("text/plain", not_dict).status == 415
    assert (invalid_body("application/json", not_dict).code, invalid_body("application/json", not_dict).message) == (
        "invalid_json",
        "body is not a JSON object",
    )
    missing = [{"type": "missing", "loc": ("body",), "msg": "Field required"}]
    assert invalid_body("application/json", missing).message == "body is empty; expected a JSON object"
    field = [{"type": "float_type", "loc": ("body", "features", "amount"), "msg": "Input should be a valid number"}]
    refused = invalid_body("application/json", field)
    assert (refused.status, refused.code, refused.message) == (422, "invalid_request", "features.amount: not a number")


def test_routing_errors_keep_their_status_and_headers():
    not_found = from_http_exception("GET", "/x" * 500, HTTPException(404))
    assert (not_found.status, not_found.code) == (404, "not_found") and len(not_found.message) < 300
    wrong = from_http_exception("PATCH", "/v1/predict", HTTPException(405, headers={"Allow": "POST"}))
    assert (wrong.status, wrong.code, wrong.headers) == (405, "method_not_allowed", {"Allow": "POST"})
    assert wrong.message == "PATCH is not allowed on /v1/predict; allowed: POST"
    other = from_http_exception("POST", "/v1/predict", HTTPException(400, "There was an error parsing the body"))
    assert (other.status, other.code) == (400, "invalid_request")
