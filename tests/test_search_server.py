"""The search server on loopback: clip-retrieval's own ClipClient, errors, limits, metrics, batching."""

from __future__ import annotations

import base64
import concurrent.futures
import json

import numpy as np
import pytest
import requests
import torch
from _search_util import build_model_index, faiss_one_thread, jpeg_bytes, load_clip_client  # noqa: F401

from clipstack import models
from clipstack.data.shards import read_samples
from clipstack.errors import ConfigError
from clipstack.search.index import SearchIndex
from clipstack.search.server import ServerConfig, ServerThread, build_engine, create_app, load_indices_json


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_model_index(tmp_path_factory.mktemp("search"))


@pytest.fixture(scope="module")
def server(built, tmp_path_factory):
    spec = tmp_path_factory.mktemp("cfg") / "indices.json"
    spec.write_text(json.dumps({"colors": str(built["idx"]),
                                "vectors": {"index_dir": str(built["idx"]), "model": None}}))
    config = ServerConfig(indices=load_indices_json(spec), max_body_bytes=200_000, max_image_bytes=50_000)
    with ServerThread(create_app(build_engine(config), config)) as url:
        yield url


def post(url, body, **kw):
    return requests.post(url, data=json.dumps(body), timeout=30, **kw)  # no Content-Type, as ClipClient


def test_clip_client_text_image_and_embedding(server, built, tmp_path):
    cc = load_clip_client()
    if cc is None:
        pytest.skip("clip-retrieval is not installed (pip install --no-deps clip-retrieval)")
    client = cc.ClipClient(f"{server}/knn-service", indice_name="colors", num_images=5, deduplicate=False,
                           modality=cc.Modality.IMAGE)
    # Text -> image: the same ranking as encoding the text here and searching exactly.
    results = client.query(text="a photo of a red square")
    model, preprocess = models.create_model_from_pretrained(built["model"])
    with torch.no_grad():
        q = model.encode_text(models.get_tokenizer(built["model"])(["a photo of a red square"]),
                              normalize=True)[0].numpy()
    index = SearchIndex(built["idx"])
    emb = np.concatenate([np.load(built["emb"] / f"img_emb/img_emb_{p}.npy") for p in (0, 1)])
    expected = np.argsort(-(emb @ q))[:5]
    assert [r["id"] for r in results] == expected.tolist()
    assert results[0]["similarity"] == pytest.approx(float(emb[expected[0]] @ q), abs=1e-4)
    assert set(results[0]) >= {"id", "similarity", "caption", "url", "key"}
    # Image file -> image: ClipClient base64-encodes the file; an indexed image finds itself first.
    sample = next(iter(read_samples(built["shards"] / "00001.tar")))
    path = tmp_path / "query.jpg"
    path.write_bytes(sample.image)
    top = client.query(image=str(path))[0]
    assert top["key"] == sample.key and top["similarity"] == pytest.approx(1.0, abs=1e-3)
    # Embedding -> text index.
    text_client = cc.ClipClient(f"{server}/knn-service", indice_name="vectors", num_images=3,
                                modality=cc.Modality.TEXT)
    vec = index.reconstruct("text", [7])[0]
    top = text_client.query(embedding_input=vec.tolist())[0]  # captions repeat per color: ties
    assert top["caption"] == index.lookup([7])[0]["caption"] and top["similarity"] == pytest.approx(1, abs=1e-4)
    # A remote image URL is refused by default (ClipClient sends http... as image_url).
    refused = client.query(image="http://127.0.0.1:9/x.jpg")
    assert refused["field"] == "image_url" and "disabled" in refused["error"]


def test_metadata_indices_health_and_ignored_fields(server):
    assert requests.get(f"{server}/indices-list").json() == ["colors", "vectors"]
    meta = post(f"{server}/metadata", {"indice_name": "colors", "ids": [2, 0]}).json()
    assert [m["id"] for m in meta] == [2, 0] and meta[1]["metadata"]["key"] == "000000000"
    assert requests.get(f"{server}/healthz").json()["status"] == "ok"
    res = post(f"{server}/knn-service", {"embedding_input": [0.1] * 64, "indice_name": "vectors",
                                          "use_safety_model": True, "aesthetic_score": 9, "extra": 1})
    assert res.status_code == 200
    assert res.headers["X-Clipstack-Ignored"] == "use_safety_model,aesthetic_score,extra"
    plain = post(f"{server}/knn-service", {"embedding_input": [0.1] * 64, "num_images": 2})
    assert "X-Clipstack-Ignored" not in plain.headers and len(plain.json()) <= 2
    info = requests.get(f"{server}/indices-info").json()
    assert info["colors"]["encodes_queries"] and not info["vectors"]["encodes_queries"]
    thumb = requests.get(f"{server}/thumbnail/colors/0")
    assert thumb.headers["content-type"] == "image/jpeg" and thumb.content[:2] == b"\xff\xd8"


@pytest.mark.parametrize("body,status,field", [
    ({"text": "x", "indice_name": "nope"}, 404, "indice_name"),
    ({"text": "x", "modality": "audio"}, 422, "modality"),
    ({"image": "%%%not base64%%%"}, 422, "image"),
    ({"image": base64.b64encode(b"not an image").decode()}, 422, "image"),
    ({"modality": "image"}, 422, "text"),
    ({"text": "a", "image": "b"}, 422, "text"),
    ({"text": "x", "num_images": 0}, 422, "num_images"),
    ({"text": "x", "num_images": "many"}, 422, "num_images"),
    ({"text": "x", "indice_name": "vectors"}, 422, "text"),  # index without a model
    ({"embedding_input": [1.0, 2.0]}, 422, "embedding_input"),  # wrong dimension
    ({"embedding_input": [0.0] * 64}, 422, "embedding_input"),
    ({"embedding_input": ["x"] * 64}, 422, "embedding_input"),
    ({"image_url": "file:///etc/passwd"}, 403, "image_url"),
    ({"image": "A" * 100_000}, 413, "image"),
    ({"text": "x", "modality": "text", "indice_name": "colors", "num_result_ids": 10**9}, 422,
     "num_result_ids"),
])
def test_bad_requests_get_4xx_naming_the_field(server, body, status, field):
    res = post(f"{server}/knn-service", body)
    assert res.status_code == status, res.text
    assert res.json()["field"] == field


def test_malformed_bodies_limits_and_paths(server):
    assert requests.post(f"{server}/knn-service", data=b"{not json", timeout=10).status_code == 422
    assert requests.post(f"{server}/knn-service", data=b"[1, 2]", timeout=10).json()["field"] == "body"
    # UTF-8 bodies take the fast lane (KnnFastLane); other encodings JSON allows go through the FastAPI
    # route, which must give the same answer
    query = json.dumps({"embedding_input": [0.5] * 64, "indice_name": "vectors", "num_images": 3,
                        "deduplicate": False})
    fast = requests.post(f"{server}/knn-service", data=query.encode(), timeout=10)
    routed = requests.post(f"{server}/knn-service", data=query.encode("utf-16"), timeout=10)
    assert fast.status_code == routed.status_code == 200 and len(fast.json()) == 3
    assert fast.json() == routed.json() and fast.headers["content-type"] == routed.headers["content-type"]
    # NaN is not JSON, but Python's parser accepts it: refused by validation, not a 5xx.
    assert requests.post(f"{server}/knn-service", data='{"embedding_input": [NaN]}').status_code == 422
    big = post(f"{server}/knn-service", {"text": "x" * 300_000})
    assert big.status_code == 413 and big.json()["field"] == "body"

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(30):
            yield b" " * 10_000

    assert requests.post(f"{server}/knn-service", data=chunks(), timeout=10).status_code == 413
    assert post(f"{server}/metadata", {"indice_name": "colors", "ids": [10**6]}).json()["field"] == "ids"
    for path in ("/static/../server.py", "/static/..%2Fserver.py", "/static/index.py", "/../../etc/passwd",
                 "/thumbnail/colors/-1", "/thumbnail/colors/99999", "/thumbnail/nope/0", "/thumbnail/x/y"):
        res = requests.get(server + path, timeout=10)
        assert 400 <= res.status_code < 500 and b"import" not in res.content, path
    page = requests.get(server + "/")
    assert page.status_code == 200 and "<title>clipstack search</title>" in page.text
    assert "http" not in requests.get(server + "/static/app.js").text.replace("http://", "")  # no CDN
    assert requests.get(f"{server}/healthz").status_code == 200  # still serving


def test_concurrent_queries_are_batched_and_match_sequential(server):
    rng = np.random.default_rng(0)
    bodies = [{"embedding_input": rng.standard_normal(64).tolist(), "num_images": 5, "deduplicate": False,
               "indice_name": "colors"} for _ in range(24)]
    bodies += [{"text": f"a photo of a {c} square", "num_images": 5, "deduplicate": False}
               for c in ("red", "blue", "green", "white") * 4]
    sequential = [post(f"{server}/knn-service", b).json() for b in bodies]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        concurrent_results = list(pool.map(lambda b: post(f"{server}/knn-service", b).json(), bodies))
    for seq, conc in zip(sequential, concurrent_results):
        assert [r["id"] for r in seq] == [r["id"] for r in conc]
        assert np.allclose([r["similarity"] for r in seq], [r["similarity"] for r in conc], atol=1e-5)
    metrics = requests.get(f"{server}/metrics").text
    assert "# TYPE clipstack_requests_total counter" in metrics
    assert 'clipstack_requests_total{route="/knn-service",status="200"}' in metrics
    count = int(next(line.split()[-1] for line in metrics.splitlines()
                     if line.startswith("clipstack_batch_size_count")))
    sum_ = float(next(line.split()[-1] for line in metrics.splitlines()
                      if line.startswith("clipstack_batch_size_sum")))
    assert sum_ > count, "concurrent queries never shared a batch"
    seconds_count = int(next(line.split()[-1] for line in metrics.splitlines()
                             if line.startswith("clipstack_batch_seconds_count")))
    assert seconds_count == count, "every batch is timed"


def test_indices_json_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_indices_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"x": {"model": "clip-tiny"}}')
    with pytest.raises(ConfigError, match="needs 'index_dir'"):
        load_indices_json(tmp_path / "bad.json")
    (tmp_path / "ok.json").write_text('{"x": "sub/idx"}')
    assert load_indices_json(tmp_path / "ok.json")["x"]["index_dir"] == str(tmp_path / "sub" / "idx")


def test_jpeg_query_via_web_style_data_url(server):
    data = "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes("red")).decode()
    res = requests.post(f"{server}/knn-service", json={"image": data, "num_images": 3, "deduplicate": False})
    assert res.status_code == 200 and len(res.json()) == 3


def test_image_url_fetching_when_enabled(built):
    import http.server
    import threading

    image = next(iter(read_samples(built["shards"] / "00000.tar")))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            data = image.image if self.path == "/img.jpg" else b"x" * 60_000
            self.send_response(200 if self.path != "/missing" else 404)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    images = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{images.server_address[1]}"
    config = ServerConfig(indices={"colors": {"index_dir": str(built["idx"])}}, allow_image_urls=True,
                          max_image_bytes=50_000)
    try:
        with ServerThread(create_app(build_engine(config), config)) as url:
            top = post(f"{url}/knn-service", {"image_url": f"{base}/img.jpg", "num_images": 1}).json()[0]
            assert top["key"] == image.key and top["similarity"] == pytest.approx(1.0, abs=1e-3)
            too_big = post(f"{url}/knn-service", {"image_url": f"{base}/big"})
            assert too_big.status_code == 413 and too_big.json()["field"] == "image_url"
            missing = post(f"{url}/knn-service", {"image_url": f"{base}/missing"})
            assert missing.status_code == 422 and "could not be fetched" in missing.json()["error"]
            assert post(f"{url}/knn-service", {"image_url": "ftp://x/y.jpg"}).json()["field"] == "image_url"
    finally:
        images.shutdown()
