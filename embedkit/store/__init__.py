"""Latent datasets on disk: the Parquet format, the reader and the atomic writer."""

from embedkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "format": [
            "EMBEDDING",
            "ERRORS_DIR",
            "LatentMeta",
            "error_files",
            "part_files",
            "read_errors",
            "read_meta",
        ],
        "dataset": ["LatentBatch", "LatentDataset", "open_latents"],
        "writer": ["LatentWriter", "write_latents"],
    },
)
