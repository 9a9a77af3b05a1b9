"""Search stage: embed shards (clip-retrieval layout), build FAISS indices, serve a clip-retrieval API.

    from clipstack.search import build_index, embed_shards, SearchIndex
    embed_shards("clip-tiny", "data/pool", "data/emb") # or a save_pretrained folder
    build_index("data/emb", "data/index", "4G")        # writes index_info.json
    index = SearchIndex("data/index")                  # memory-mapped; .search(), .lookup()

Names resolve on first use, so importing this package (and `clipstack --help`) loads no FAISS or torch.
"""

from __future__ import annotations

from clipstack.lazy import lazy_attributes

_LAZY = {
    "embed_shards": "clipstack.search.embed",
    "build_index": "clipstack.search.index",
    "SearchIndex": "clipstack.search.index",
    "choose_index": "clipstack.search.select",
    "create_app": "clipstack.search.server",
    "ServerConfig": "clipstack.search.server",
}


_ALIASES = {"embed_shards": "embed"}  # the module `embed` would shadow a function of the same name


__getattr__ = lazy_attributes(__name__, _LAZY, _ALIASES)


__all__ = list(_LAZY)
