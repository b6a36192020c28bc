"""Property-based fuzzing of the OpenAPI schema (schemathesis): whatever a client sends, no 5xx.

Runs against the real index (Milvus Lite) with the real models; ~30 generated requests per operation
(valid and invalid ones), a few seconds per operation on the CPU. The bulk-index POST is included:
generated roots are never under the allowed root that holds images, so no job does real work.
Responses must also match the documented schemas and content types.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from embedsvc.core.config import Settings
from embedsvc.main import create_app
from tests.api.conftest import INDEX, LABELS, LIMITS, MODELS, ApiEnv
from tests.support import SAMPLE_PHOTOS

# The schema as the test app publishes it (k's maximum and the thumbnail sizes come from LIMITS).
# Built without starting the app: schemathesis' own ``from_fixture`` does not work with pytest 9.
schema = schemathesis.openapi.from_dict(create_app(Settings(**LIMITS)).openapi())


@pytest.fixture(scope="module")
def fuzz_app(client: TestClient, api_env: ApiEnv) -> Iterator[FastAPI]:
    """A second app on the same index, started (lifespan) for the whole module."""
    app = create_app(api_env.settings, embedders=api_env.embedders)
    with TestClient(app):
        yield app


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
def test_no_server_errors(case: schemathesis.Case, fuzz_app: FastAPI) -> None:
    case.call_and_validate(
        app=fuzz_app, checks=[not_a_server_error, content_type_conformance, response_schema_conformance]
    )


# Random queries against the *existing* index (generated index names above almost never hit it).
_JPEG = st.sampled_from(sorted(SAMPLE_PHOTOS.glob("bird/*.jpg"))[:3]).map(lambda p: p.read_bytes())
_BYTES = st.one_of(
    st.binary(max_size=2048),
    _JPEG,
    st.tuples(_JPEG, st.integers(0, 30_000)).map(lambda t: t[0][: t[1]]),  # truncated at any point
    st.tuples(_JPEG, st.integers(0, 30_000), st.binary(min_size=1, max_size=64)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + len(t[2]) :]  # bytes overwritten in the middle
    ),
)
_PARAMS = st.fixed_dictionaries(
    {"index": st.just(INDEX)},
    optional={
        "k": st.one_of(st.integers(-5, 30), st.text(max_size=4)),
        "models": st.lists(st.sampled_from([*MODELS, "bogus", "", ",", "resnet50"]), max_size=3).map(",".join),
        "label": st.one_of(st.sampled_from([*LABELS, "zebra", "-1", "0", "99999999999999999999"]), st.text(max_size=8)),
    },
)


@given(data=_BYTES, params=_PARAMS, as_json=st.booleans())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_search_on_the_real_index_never_5xx(client: TestClient, data: bytes, params: dict, as_json: bool) -> None:
    if as_json:
        resp = client.post("/search", params=params, json={"image_base64": base64.b64encode(data).decode()})
    else:
        resp = client.post("/search", params=params, files={"image": ("q.jpg", data)})
    assert resp.status_code in (200, 400, 404, 409, 413, 415, 422), resp.text
    body = resp.json()
    if resp.status_code == 200:
        assert all(len(m["neighbours"]) <= int(params.get("k", 10)) for m in body["models"])
    else:
        assert set(body) <= {"detail", "error", "errors", "request_id"} and body["detail"]


_LABEL = st.one_of(st.sampled_from([*LABELS, "zebra", "-1", "0", "2", "99999999999999999999"]), st.text(max_size=8))
_LISTING = st.one_of(
    st.tuples(
        st.just("images"),
        st.fixed_dictionaries(
            {},
            optional={
                "offset": st.one_of(st.integers(-2, 20), st.integers(0, 2**64), st.text(max_size=4)),
                "limit": st.one_of(st.integers(-1, 600), st.text(max_size=4)),
                "label": _LABEL,
            },
        ),
    ),
    st.tuples(
        st.just("images/random"),
        st.fixed_dictionaries(
            {},
            optional={
                "count": st.one_of(st.integers(-1, 120), st.text(max_size=4)),
                "seed": st.one_of(st.integers(-2, 2**64), st.text(max_size=4)),
                "label": _LABEL,
            },
        ),
    ),
)


@given(call=_LISTING)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_listing_on_the_real_index_never_5xx(client: TestClient, api_env: ApiEnv, call: tuple) -> None:
    suffix, params = call
    resp = client.get(f"/indexes/{INDEX}/{suffix}", params=params)
    assert resp.status_code in (200, 404, 422), resp.text
    body = resp.json()
    if resp.status_code == 200:
        assert body["count"] == len(body["data"]) <= body["total"] <= len(api_env.rel_paths)
        assert len({r["id"] for r in body["data"]}) == body["count"]
    else:
        assert set(body) <= {"detail", "error", "errors", "request_id"} and body["detail"]
