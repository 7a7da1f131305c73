"""The blocks of a latent vector a probe scores apart: the whole vector, and each part
(e.g. each stage of a timm backbone with ``layers=``) its ``BackboneInfo.segments`` name."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from embedkit.plugins.info import BackboneInfo

__all__ = ["ALL", "Block", "vector_blocks"]

#: the name of the block that is the whole vector
ALL = "all"


@dataclass(frozen=True)
class Block:
    """Columns ``start:stop`` of the vectors, named."""

    name: str
    start: int
    stop: int

    @property
    def width(self) -> int:
        return self.stop - self.start

    def of(self, vectors: np.ndarray) -> np.ndarray:
        """This block's columns of ``vectors`` ``[N, D]``."""
        return vectors[:, self.start : self.stop]


def vector_blocks(info: BackboneInfo, dim: int) -> list[Block]:
    """Each segment, then ``all`` when there are several; one block without segments.

    Segments that do not add up to ``dim`` (a plugin's mistake) are ignored with a
    warning: the vector is then probed as one block.
    """
    whole = Block(ALL, 0, dim)
    widths = [width for _, width in info.segments]
    if not info.segments:
        return [whole]
    if sum(widths) != dim or min(widths) < 1:
        warnings.warn(
            f"backbone {info.name} records segments {list(info.segments)} that do not add "
            f"up to its dim {dim}; probing the whole vector only",
            stacklevel=3,
        )
        return [whole]
    edges = np.cumsum([0, *widths]).tolist()
    parts = [
        Block(name, start, stop)
        for (name, _), start, stop in zip(info.segments, edges[:-1], edges[1:], strict=True)
    ]
    return parts if len(parts) == 1 else [*parts, whole]
