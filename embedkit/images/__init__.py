"""Images in: sources (folders, tables, lists, DataFrames), the built-in shapes corpus,
and the one decoder every image goes through."""

from embedkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "decode": ["load_image", "load_image_resized", "load_images"],
        "sources": ["IMAGE_EXTENSIONS", "Source", "read_source"],
        "corpus": ["COLORS", "SHAPES", "SIZES", "color_of", "make_shapes", "read_labels"],
    },
)
