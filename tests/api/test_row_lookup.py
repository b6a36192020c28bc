"""Issue #10: the image routes and the listing resolve ids by one rule (the search core's ``find_row``)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from embedsvc.store import Store
from tests.api.conftest import INDEX, MODELS, ApiEnv


def test_every_listed_id_serves_its_image_when_the_first_model_lacks_rows(
    client: TestClient, api_env: ApiEnv, store: Store
) -> None:
    """The first model's collection misses some rows (a model added later, an interrupted run): the
    listing reads the fullest model, and every id it lists must also serve its image (it used to 404)."""
    name = "partial-first"
    first = store.models_of(INDEX)[0]  # the model the image routes used to read
    for key in MODELS:
        manifest = store.get_manifest(INDEX, key)
        for field in ("index", "model_key", "collection", "created_at", "updated_at"):
            manifest.pop(field)
        store.ensure_collection(name, key, manifest)
        ids = sorted(store.existing_rows(INDEX, key))
        store.upsert(name, key, store.get_rows(INDEX, key, ids[2:] if key == first else ids, with_vectors=True))
    try:
        page = client.get(f"/indexes/{name}/images", params={"limit": 100}).json()
        assert page["model_key"] != first and page["total"] == len(api_env.rel_paths)
        for row in page["data"]:
            image = client.get(f"/images/{name}/{row['id']}")
            assert image.status_code == 200, (row, image.text)
            assert image.content == (api_env.dataset / row["rel_path"]).read_bytes()
            assert client.get(f"/images/{name}/{row['id']}/thumbnail").status_code == 200
        missing = client.get(f"/images/{name}/12345")
        assert missing.status_code == 404 and missing.json()["error"] == "unknown_id"
    finally:
        store.drop_index(name)
