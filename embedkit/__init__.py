"""embedkit: turn image collections into latent vectors and work with them."""

from embedkit.algebra import (
    AttributeVector,
    analogy,
    apply_vector,
    attribute_vector,
    attribute_vectors,
    centroids,
    interpolate,
    vectors_for_ids,
)
from embedkit.backbone import Backbone, BackboneInfo
from embedkit.cluster import KMeansResult, kmeans
from embedkit.embed import EmbedResult, embed
from embedkit.errors import BackboneError, BackboneNotFound, EmbedkitError, InputError, PluginError
from embedkit.hookspecs import hookimpl
from embedkit.index import LoadedIndex, build_index, load_index
from embedkit.pictures import (
    analogy_grid,
    attribute_sweep,
    interpolation_strip,
    neighbour_grid,
    render_latents,
)
from embedkit.plugins import broken_plugins
from embedkit.registry import list_backbones, load_backbone
from embedkit.search import neighbors
from embedkit.sources import load_image, read_source
from embedkit.store import LatentDataset, open_latents
from embedkit.vectors import load_vectors, save_vectors
from embedkit.writer import LatentWriter, write_latents

__version__ = "0.1.0"

__all__ = [
    "AttributeVector",
    "Backbone",
    "BackboneError",
    "BackboneInfo",
    "BackboneNotFound",
    "EmbedResult",
    "EmbedkitError",
    "InputError",
    "KMeansResult",
    "LatentDataset",
    "LatentWriter",
    "LoadedIndex",
    "PluginError",
    "analogy",
    "analogy_grid",
    "apply_vector",
    "attribute_sweep",
    "attribute_vector",
    "attribute_vectors",
    "broken_plugins",
    "build_index",
    "centroids",
    "embed",
    "hookimpl",
    "interpolate",
    "interpolation_strip",
    "kmeans",
    "list_backbones",
    "load_backbone",
    "load_image",
    "load_index",
    "load_vectors",
    "neighbors",
    "neighbour_grid",
    "open_latents",
    "read_source",
    "render_latents",
    "save_vectors",
    "vectors_for_ids",
    "write_latents",
]
