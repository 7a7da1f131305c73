"""FAISS indexes over latent datasets: choose, build, tune, persist, load, search.

``choose`` holds the ``auto`` rules, ``select`` ``auto`` by measurement, ``plan`` the
build plan, ``build`` the build steps, ``tune``/``recall`` the recall tuning, ``gpu`` GPU
placement and limits, ``info``/``persist``/``load`` the saved index folder; ``parts``,
``refresh``, ``removal``, ``recall_set``, ``recheck`` and ``update`` keep a saved index
up to date as the latents grow and shrink; ``search`` is the ``neighbors`` API (with
``search_cache``, ``resolve``, ``queries``, ``results`` around faiss, ``filtered`` and
``filter_tune`` for filtered views, ``radius`` for threshold search, ``where`` for
``--where`` filters).
"""

from embedkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "build": ["TARGET_RECALL", "build_index"],
        "choose": ["IndexChoice", "choose_index", "parse_memory"],
        "info": ["IndexInfo", "index_dir"],
        "load": ["load_index"],
        "loaded": ["LoadedIndex"],
        "metric": ["METRICS"],
        "persist": ["read_info"],
        "queries": ["load_vector_file"],
        "search": ["clear_index_cache", "neighbors"],
        "batch_search": ["read_query_ids", "search_many"],
        "update": ["update_index"],
        "where": ["parse_where"],
    },
)
