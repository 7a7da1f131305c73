"""embedkit: turn image collections into latent vectors and work with them.

Every public name is exported lazily: ``import embedkit`` imports neither torch nor
faiss; ``embedkit.embed`` (for example) imports what it needs on first use.
"""

from embedkit.lazy import attach
from embedkit.version import __version__

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "embedkit.errors": [
            "BackboneError",
            "BackboneNotFound",
            "EmbedkitError",
            "InputError",
            "PluginError",
        ],
        "embedkit.plugins.hookspecs": ["hookimpl"],
        "embedkit.plugins.info": ["BackboneInfo"],
        "embedkit.plugins.backbone": ["Backbone"],
        "embedkit.plugins.registry": ["broken_plugins", "list_backbones", "load_backbone"],
        "embedkit.images.decode": ["load_image"],
        "embedkit.images.sources": ["read_source"],
        "embedkit.store.dataset": ["LatentDataset", "open_latents"],
        "embedkit.store.writer": ["LatentWriter", "write_latents"],
        "embedkit.pipeline.steps": ["EmbedResult"],
        "embedkit.pipeline.embedding": ["embed"],
        "embedkit.index.loaded": ["LoadedIndex"],
        "embedkit.index.build": ["build_index"],
        "embedkit.index.load": ["load_index"],
        "embedkit.index.search": ["neighbors"],
        "embedkit.algebra.attributes": [
            "AttributeVector",
            "attribute_vector",
            "attribute_vectors",
        ],
        "embedkit.algebra.arithmetic": [
            "analogy",
            "apply_vector",
            "interpolate",
            "vectors_for_ids",
        ],
        "embedkit.algebra.clusters": ["KMeansResult", "centroids", "kmeans"],
        "embedkit.algebra.vector_table": ["load_vectors", "save_vectors"],
        "embedkit.algebra.projection": ["project"],
        "embedkit.viz.pictures": [
            "analogy_grid",
            "attribute_sweep",
            "interpolation_strip",
            "neighbour_grid",
            "render_latents",
        ],
        "embedkit.viz.report": ["latents_report"],
        "embedkit.curation": [
            "coverage_radius",
            "diverse_subset",
            "label_issues",
            "near_duplicates",
            "outliers",
            "uniqueness",
        ],
        "embedkit.probes.measure": ["probe"],
        "embedkit.serve.server": ["serve"],
        "embedkit.demo": ["run_demo"],
    },
)
__all__ = [*__all__, "__version__"]
