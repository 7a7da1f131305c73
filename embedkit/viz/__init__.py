"""Pictures of latents: PNG grids, edits rendered by decoding or by nearest corpus image,
and the self-contained HTML report."""

from embedkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "grid": ["image_grid", "load_thumbnail", "save_png"],
        "pictures": [
            "LatentRenderer",
            "analogy_grid",
            "attribute_sweep",
            "interpolation_strip",
            "neighbour_grid",
            "render_latents",
        ],
        "html": ["Report", "pca_2d", "scatter_svg"],
        "report": ["build_report", "latents_report"],
    },
)
