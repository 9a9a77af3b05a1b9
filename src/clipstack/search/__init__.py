"""Search stage: embed shards (clip-retrieval layout), build FAISS indices, serve a clip-retrieval API.

    from clipstack.search import build_index, embed_shards, SearchIndex
    embed_shards("clip-tiny", "data/pool", "data/emb") # or a save_pretrained folder
    build_index("data/emb", "data/index", "4G")        # writes index_info.json
    index = SearchIndex("data/index")                  # memory-mapped; .search(), .lookup()

Names resolve on first use, so importing this package (and `clipstack --help`) loads no FAISS or torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "embed_shards": "clipstack.search.embed",
    "build_index": "clipstack.search.index",
    "SearchIndex": "clipstack.search.index",
    "choose_index": "clipstack.search.select",
    "create_app": "clipstack.search.server",
    "ServerConfig": "clipstack.search.server",
}


_ALIASES = {"embed_shards": "embed"}  # the module `embed` would shadow a function of the same name


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), _ALIASES.get(name, name))
    raise AttributeError(f"module 'clipstack.search' has no attribute {name!r}")


__all__ = list(_LAZY)
