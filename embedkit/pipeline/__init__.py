"""The embedding pipeline: shared steps, the local engine and the Ray engine.

``embedding.embed`` picks an engine; ``local`` and ``ray_engine`` each build on
``steps`` and never import each other.
"""

from embedkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "embedding": ["ENGINES", "embed"],
        "steps": ["EmbedOptions", "EmbedResult", "default_num_workers"],
        "local": ["embed_local"],
        "ray_engine": ["RayEmbedResult", "embed_with_ray"],
    },
)
