"""BackboneInfo: what made a set of latents, and whether two sets share a latent space."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BackboneInfo"]

#: config keys that say where a backbone ran, not which latent space it produces
PLACEMENT_KEYS = frozenset({"device"})


@dataclass(frozen=True)
class BackboneInfo:
    """What made a set of latents: enough to rebuild the backbone.

    ``load_backbone(info.name, **info.config)`` returns an equivalent backbone.
    """

    name: str
    dim: int
    dtype: str = "float32"
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> BackboneInfo:
        data = json.loads(text)
        return cls(
            name=data["name"],
            dim=int(data["dim"]),
            dtype=data.get("dtype", "float32"),
            config=data.get("config") or {},
        )

    def compatible_with(self, other: BackboneInfo) -> bool:
        """Whether latents of ``self`` and ``other`` live in the same space and may be
        mixed: same name, dim and config (placement such as ``device`` aside; timm's
        pretrained and random weights share a name and dim but not a config)."""
        return (self.name, self.dim, self.space_config()) == (
            other.name,
            other.dim,
            other.space_config(),
        )

    def space_config(self) -> dict[str, Any]:
        """The config without placement keys: what determines the latent space."""
        return {k: v for k, v in self.config.items() if k not in PLACEMENT_KEYS}
