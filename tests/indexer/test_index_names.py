"""Index names: one pattern for the CLI, the API and the store, checked before any path or collection exists."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from embedsvc.core.errors import EmbedsvcError
from embedsvc.store import Store
from embedsvc.store.naming import INDEX_NAME_PATTERN, BadIndexNameError, IndexName, check_index_name

GOOD = ["photos", "samples", "imagenet-val", "my_photos", "a", "A1", "t-1a2b3c4d", "x" * 64, "2024-trip"]
BAD = ["", "..", ".", "../../escaped", "a/b", "a\\b", "-x", "_x", ".hidden", "my photos", "x" * 65, "ph*", "a\x00",
       "café", "a.b", " a", "a\n", "\udce9"]


@pytest.mark.parametrize("name", GOOD)
def test_good_names_pass_unchanged(name: str) -> None:
    assert check_index_name(name) == name


@pytest.mark.parametrize("name", [*BAD, None, 3, b"photos"])
def test_bad_names_are_refused_with_a_coded_error(name: object) -> None:
    with pytest.raises(BadIndexNameError) as info:
        check_index_name(name)
    err = info.value
    assert isinstance(err, EmbedsvcError) and err.code == "bad_index_name" and err.http_status == 422
    assert "letters, digits" in err.message and "\n" not in err.message


def test_index_name_type_in_pydantic_and_fastapi() -> None:
    class Body(BaseModel):
        name: IndexName

    assert Body(name="photos").name == "photos"
    for bad in BAD:
        with pytest.raises(ValidationError):
            Body(name=bad)

    app = FastAPI()

    @app.get("/indexes/{name}")
    def get(name: IndexName) -> dict:
        return {"name": name}

    client = TestClient(app)
    assert client.get("/indexes/photos").json() == {"name": "photos"}
    for bad in ["a b", "-x", "x" * 65, "ph*", "caf%C3%A9"]:
        assert client.get(f"/indexes/{bad}").status_code == 422, bad
    schema = app.openapi()["paths"]["/indexes/{name}"]["get"]["parameters"][0]["schema"]
    assert schema["pattern"] == INDEX_NAME_PATTERN


def test_store_refuses_to_create_a_collection_with_a_bad_name(lite_uri: str) -> None:
    store = Store(lite_uri)
    try:
        with pytest.raises(BadIndexNameError):
            store.ensure_collection("..", "m", {"dim": 4, "model_name": "m"})
        assert ".." not in store.list_indexes()
    finally:
        store.close()
