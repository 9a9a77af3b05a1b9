"""`clipstack embed` over real shards with a real tiny model: layout, counts, resume, float16."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from _search_util import faiss_one_thread, write_color_shards  # noqa: F401 - an autouse fixture
from PIL import Image

from clipstack import models
from clipstack.cli import main
from clipstack.data.shards import image_bytes_to_pil, read_samples
from clipstack.search import layout


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "clip-tiny"
    models.save_pretrained(models.create_model("clip-tiny"), path)
    return path


def _add_bad_shard(folder):
    """Shard 2: a sample with no image member, then a good one, then the tar is cut mid-member."""
    good = io.BytesIO()
    Image.new("RGB", (20, 20), "white").save(good, "JPEG")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        members = [("000020000.txt", b"no image here")]
        for i in range(1, 4):
            members += [(f"00002000{i}.jpg", good.getvalue()), (f"00002000{i}.txt", b"a white square")]
        for name, data in [*members, ("000020004.jpg", good.getvalue() * 4)]:
            cut = raw.tell() + 512 + 1000  # ends inside the last image's data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (folder / "00002.tar").write_bytes(raw.getvalue()[:cut])


def test_embed_layout_counts_and_values(tmp_path, model_dir, capsys):
    write_color_shards(tmp_path / "shards", shards=2, per_shard=10)
    _add_bad_shard(tmp_path / "shards")
    out = tmp_path / "emb"
    assert main(["embed", str(model_dir), str(tmp_path / "shards"), str(out), "--batch-size", "4"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["parts"] == 3 and stats["kept"] == 10 + 9 + 3
    assert stats["dropped"] == {"undecodable_image": 1, "bad_sample": 1}
    assert stats["read"] == stats["kept"] + sum(stats["dropped"].values())
    assert len(stats["shard_errors"]) == 1 and "00002.tar" in stats["shard_errors"][0]
    model, preprocess = models.create_model_from_pretrained(model_dir)
    tokenizer = models.get_tokenizer(model_dir)
    for part, count in enumerate((9, 10, 3)):
        img = np.load(layout.emb_path(out, "image", part))
        txt = np.load(layout.emb_path(out, "text", part))
        meta = pq.read_table(layout.metadata_path(out, part)).to_pylist()
        thumbs = pq.read_table(layout.thumbs_path(out, part)).column("thumbnail").to_pylist()
        assert img.shape == txt.shape == (count, model.embed_dim) and img.dtype == np.float32
        assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-4)
        assert len(meta) == len(thumbs) == count
        assert Image.open(io.BytesIO(thumbs[0])).format == "JPEG"
    # Row 3 of shard 0 was broken, so metadata skips its key; values match a direct forward pass.
    meta0 = pq.read_table(layout.metadata_path(out, 0)).to_pylist()
    assert "000000003" not in [m["key"] for m in meta0] and meta0[0]["url"].endswith("000000000.jpg")
    sample = next(s for s in read_samples(tmp_path / "shards" / "00000.tar") if s.key == meta0[4]["key"])
    with torch.no_grad():
        ref_img = model.encode_image(preprocess(image_bytes_to_pil(sample.image))[None], normalize=True)
        ref_txt = model.encode_text(tokenizer([sample.caption]), normalize=True)
    assert np.allclose(np.load(layout.emb_path(out, "image", 0))[4], ref_img[0].numpy(), atol=1e-5)
    assert np.allclose(np.load(layout.emb_path(out, "text", 0))[4], ref_txt[0].numpy(), atol=1e-5)
    info = json.loads((out / layout.EMBED_INFO_FILE).read_text())
    assert info["dim"] == model.embed_dim and info["model"] == str(model_dir.resolve())


def test_embed_resumes_per_part_and_float16(tmp_path, model_dir, capsys):
    write_color_shards(tmp_path / "shards", shards=3, per_shard=5, broken=False)
    out = tmp_path / "emb"
    args = ["embed", str(model_dir), str(tmp_path / "shards"), str(out), "--dtype", "float16",
            "--no-thumbnails"]
    assert main(args) == 0
    first = {p: layout.emb_path(out, "image", p).stat().st_mtime_ns for p in range(3)}
    assert np.load(layout.emb_path(out, "image", 0)).dtype == np.float16
    assert not (out / "thumbs").exists()
    layout.metadata_path(out, 1).unlink()  # as if killed while writing part 1
    capsys.readouterr()
    assert main(args) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["parts_skipped"] == 2 and stats["kept"] == 15
    now = {p: layout.emb_path(out, "image", p).stat().st_mtime_ns for p in range(3)}
    assert now[0] == first[0] and now[2] == first[2] and now[1] != first[1]
    # The same folder with different settings is refused, naming the setting.
    assert main(["embed", str(model_dir), str(tmp_path / "shards"), str(out)]) == 2
    assert "dtype='float16'" in capsys.readouterr().err
