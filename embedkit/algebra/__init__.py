"""Latent algebra: joining labels, centroids and clusters, attribute vectors, arithmetic
and interpolation, saved vector tables, and 2-D maps (projection)."""

from embedkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "labels": ["JoinReport", "LabeledLatents", "labeled"],
        "clusters": ["KMeansResult", "centroids", "kmeans", "kmeans_plus_plus"],
        "attributes": [
            "AttributeVector",
            "attribute_vector",
            "attribute_vectors",
            "auc",
            "cohens_d",
        ],
        "arithmetic": [
            "analogy",
            "apply_vector",
            "interpolate",
            "lerp",
            "slerp",
            "vectors_for_ids",
        ],
        "vector_table": ["load_vectors", "save_vectors"],
        "projection": ["project"],
    },
)
