"""Curating a corpus from its latents: near-duplicates, uniqueness and outliers, likely
label mistakes, a diverse subset, and a 2-D map. Each job streams the rows through the
dataset's FAISS index in batches and returns a DataFrame joinable on ``id``."""

from embedkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "duplicates": ["near_duplicates", "nearest_distances"],
        "threshold": ["AutoThreshold", "auto_threshold"],
        "unusual": ["most_unique", "outliers", "uniqueness"],
        "mislabels": ["label_issues"],
        "diverse": ["coverage_radius", "diverse_subset"],
        "maps": ["check_color_column", "draw_map", "map_colors", "save_map"],
        "knn": ["curation_index"],
        "tables": ["write_frame"],
    },
)
