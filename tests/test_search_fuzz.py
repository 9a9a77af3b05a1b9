"""Hypothesis-generated requests built from the server's own OpenAPI schema: never a 5xx, always JSON."""

from __future__ import annotations

import base64
import json
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

import pytest
import requests
from _search_util import build_model_index, faiss_one_thread, jpeg_bytes  # noqa: F401 - an autouse fixture
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clipstack.search.server import STATIC_TYPES, ServerConfig, ServerThread, build_engine, create_app

QUERY_INPUTS = ("text", "image", "image_url", "embedding_input")
IMAGES = [base64.b64encode(jpeg_bytes(c, seed=i)).decode() for i, c in enumerate(["red", "blue"])] + [
    base64.b64encode(jpeg_bytes("red", size=(1, 1))).decode(), base64.b64encode(b"GIF89a").decode()]
JSON_SCALARS = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=20)
ANY_JSON = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)


def from_schema(schema: dict, defs: dict) -> st.SearchStrategy:
    """A strategy for values that mostly fit `schema`, sometimes not at all (any JSON)."""
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in schema:
        return st.one_of([from_schema(s, defs) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "string":
        return st.text(max_size=min(schema.get("maxLength", 64), 64)) | st.sampled_from(
            ["", "colors", "vectors", "aGVsbG8=", "data:image/png;base64,AAAA", "http://127.0.0.1:1/x"])
    if kind == "integer":
        return st.integers(schema.get("minimum", -10) - 2, min(schema.get("maximum", 2000), 20000) + 2)
    if kind == "number":
        return st.floats(-1e6, 1e6, allow_nan=False) | st.just(1e308)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        item = from_schema(schema.get("items", {}), defs)
        return st.lists(item, max_size=70) | st.lists(item, min_size=64, max_size=64)
    if kind == "object":
        return body_strategy(schema, defs)
    return ANY_JSON


def body_strategy(schema: dict, defs: dict) -> st.SearchStrategy:
    """Mostly schema-shaped bodies with one well-formed query input (so many requests succeed), plus
    bodies whose fields are anything at all."""
    props = schema.get("properties", {})
    loose = {name: from_schema(sub, defs) | ANY_JSON for name, sub in props.items()}
    shaped = {name: from_schema(sub, defs) for name, sub in props.items() if name not in (*QUERY_INPUTS, "ids")}
    if "ids" in props:
        valid = st.fixed_dictionaries({"ids": st.lists(st.integers(-2, 20), max_size=5)}, optional=shaped)
    else:
        query = st.one_of(
            st.fixed_dictionaries({"text": st.text(max_size=200)}),
            st.fixed_dictionaries({"embedding_input": st.lists(st.floats(-10, 10, allow_nan=False),
                                                               min_size=64, max_size=64)}),
            st.fixed_dictionaries({"image": st.sampled_from(IMAGES)}))
        valid = st.tuples(query, st.fixed_dictionaries({}, optional=shaped)).map(lambda t: {**t[1], **t[0]})
    return valid | st.fixed_dictionaries({}, optional=loose) | ANY_JSON


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    built = build_model_index(tmp_path_factory.mktemp("fuzz"), shards=1, per_shard=16)
    config = ServerConfig(indices={"colors": {"index_dir": str(built["idx"])},
                                   "vectors": {"index_dir": str(built["idx"]), "model": None}},
                          max_body_bytes=100_000)
    with ServerThread(create_app(build_engine(config), config)) as url:
        schema = requests.get(f"{url}/openapi.json", timeout=10).json()
        yield url, schema


# Pages by design: the search page, and FastAPI's OpenAPI pages (`/docs` is in the search tour).
HTML_PATHS = ("/", "/docs", "/redoc", "/docs/oauth2-redirect")


def _expected_type(path: str, status: int) -> str:
    """The content type a response must have, from the path the server saw (the client removes dot
    segments, so `/thumbnail/../docs` asks for `/docs`; the server decodes `%2F`, so `/static%2Fapp.js`
    is `/static/app.js`)."""
    if status >= 400:
        return "application/json"  # every error, an unknown path's 404 included
    if path in HTML_PATHS:
        return "text/html"
    if path.startswith("/static/"):
        return STATIC_TYPES[PurePosixPath(path).suffix].split(";")[0]
    if path.startswith("/thumbnail/"):
        return "image/jpeg"
    if path == "/metrics":
        return "text/plain"
    return "application/json"


def _check(res: requests.Response) -> None:
    assert res.status_code < 500, res.text
    path = unquote(urlsplit(res.url).path)
    expected = _expected_type(path, res.status_code)
    assert res.headers["content-type"].split(";")[0] == expected, (path, res.status_code, res.headers)
    if res.status_code >= 400:
        body = res.json()
        assert body["error"] and "field" in body


def test_openapi_schema_lists_the_routes(server):
    _, schema = server
    assert {"/knn-service", "/metadata", "/indices-list", "/healthz", "/metrics"} <= set(schema["paths"])
    knn = schema["components"]["schemas"]["KnnRequest"]["properties"]
    assert {"text", "image", "image_url", "embedding_input", "modality", "num_images", "num_result_ids",
            "indice_name", "deduplicate", "use_mclip", "aesthetic_score"} <= set(knn)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_generated_post_bodies_never_5xx(server, data):
    url, schema = server
    defs = schema["components"]["schemas"]
    path = data.draw(st.sampled_from(["/knn-service", "/metadata"]))
    ref = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body = data.draw(body_strategy(defs[ref["$ref"].rsplit("/", 1)[-1]], defs))
    headers = data.draw(st.sampled_from([{}, {"Content-Type": "application/json"}, {"Content-Type": "text/plain"}]))
    _check(requests.post(url + path, data=json.dumps(body), headers=headers, timeout=30))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
       path=st.sampled_from(["/knn-service", "/metadata"]))
def test_raw_garbage_never_5xx(server, raw, path):
    url, _ = server
    _check(requests.post(url + path, data=raw, timeout=30))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(index=st.text(max_size=12) | st.sampled_from(["colors", "vectors", "..", "%2e%2e"]),
       row=st.integers(-5, 10**12).map(str) | st.text(max_size=12))
# Every path that answers in something other than JSON, each by design, and JSON errors beside them:
@example(index="..", row="")  # "/thumbnail/../" -> "/", the page
@example(index=".", row="..")  # "/thumbnail/./.." -> "/"
@example(index="..", row="docs")  # FastAPI's OpenAPI pages
@example(index="..", row="redoc")
@example(index="..", row="static/app.js")  # the page's assets ("%2F" is decoded by the server)
@example(index="..", row="static/app.css")
@example(index="..", row="static/index.html")
@example(index="..", row="metrics")  # Prometheus text
@example(index="..", row="static/nope.js")  # unknown asset: JSON 404
@example(index="..", row="nope")  # unknown path: JSON 404
@example(index=".", row="x")  # "/thumbnail/x": JSON 404
@example(index="colors", row="0")  # a thumbnail
@example(index="colors", row="-1")  # JSON 404
@example(index="colors", row="x")  # JSON 422
def test_generated_get_paths_never_5xx(server, index, row):
    url, _ = server
    quote = requests.utils.quote
    res = requests.get(f"{url}/thumbnail/{quote(index, safe='')}/{quote(row, safe='')}", timeout=30)
    _check(res)
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
