"""Data stage: image-text pairs in, WebDataset shards (img2dataset's layout) and tensors out.

    from clipstack.data import IngestConfig, read_samples, image_transform
    from clipstack.data.ingest import ingest            # the module shares the function's name
    result = ingest("captions.csv", "shards/", IngestConfig(caption_cols=["text"]))
    for sample in read_samples("shards/{00000..00003}.tar"):
        ...                                              # decoded Sample(key, image bytes, captions, meta)
    preprocess = image_transform(224, is_train=False)   # open_clip's eval transform, no torchvision

Modules: `shards` (write/read tars, manifests, robust reading), `ingest` + `sources` + `download` +
`resize` (`clipstack ingest`), `transforms`, `loader` (the training stream with exact resume) and
`synthetic` (`clipstack synth`). Names resolve on first use, so importing this package loads nothing heavy.
"""

from __future__ import annotations

from clipstack.lazy import lazy_attributes

_LAZY = {
    "IngestConfig": "clipstack.data.ingest",
    "IngestResult": "clipstack.data.ingest",
    "Sample": "clipstack.data.shards",
    "write_shard": "clipstack.data.shards",
    "iter_shard": "clipstack.data.shards",
    "read_samples": "clipstack.data.shards",
    "expand_urls": "clipstack.data.shards",
    "open_image": "clipstack.data.shards",
    "image_transform": "clipstack.data.transforms",
    "preprocess_from_cfg": "clipstack.data.transforms",
    "TrainLoader": "clipstack.data.loader",
    "LoaderSpec": "clipstack.data.loader",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = list(_LAZY)
