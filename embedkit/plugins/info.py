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
    """What made a set of latents: enough to rebuild the backbone, and to tell its space.

    ``load_backbone(info)`` (``info.name`` with ``info.config`` as options) returns an
    equivalent backbone. ``identity`` pins the latent space beyond the name: a digest of
    the weights actually loaded, the precision they ran in, the embedkit version, and
    what a plugin adds (e.g. timm's version and pretrained tag). It is filled when
    latents are written (:meth:`embedkit.Backbone.identified_info`).

    ``segments`` describes a vector made of concatenated parts, in order, as
    ``((name, width), ...)`` (timm's ``layers=`` gives ``(("stage1", 24), ...)``);
    empty for a vector of one piece. It is descriptive: not part of the latent space
    (:meth:`differences` ignores it), and stored only when present.
    """

    name: str
    dim: int
    dtype: str = "float32"
    config: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)
    segments: tuple[tuple[str, int], ...] = ()

    def to_json(self) -> str:
        data = asdict(self)
        if not self.segments:  # datasets written before segments existed look the same
            del data["segments"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> BackboneInfo:
        data = json.loads(text)
        return cls(
            name=data["name"],
            dim=int(data["dim"]),
            dtype=data.get("dtype", "float32"),
            config=data.get("config") or {},
            identity=data.get("identity") or {},
            segments=tuple((str(name), int(width)) for name, width in data.get("segments") or ()),
        )

    def space_config(self) -> dict[str, Any]:
        """The config without placement keys: what determines the latent space."""
        return {k: v for k, v in self.config.items() if k not in PLACEMENT_KEYS}

    def differences(self, other: BackboneInfo) -> list[str]:
        """What tells these latents' space from ``other``'s, one phrase each; empty when
        they may be mixed (same name, dim, config and identity)."""
        found = []
        if self.name != other.name:
            found.append(f"backbone {self.name} vs {other.name}")
        if self.dim != other.dim:
            found.append(f"dim {self.dim} vs {other.dim}")
        if found:  # another backbone: its config and identity differ too, say no more
            return found
        mine, theirs = self.space_config(), other.space_config()
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                found.append(f"{key}={mine.get(key)!r} vs {theirs.get(key)!r}")
        for key in sorted(set(self.identity) | set(other.identity)):
            if self.identity.get(key) != other.identity.get(key):
                found.append(
                    f"{key} {_short(self.identity.get(key))} vs {_short(other.identity.get(key))}"
                )
        return found

    def compatible_with(self, other: BackboneInfo) -> bool:
        """Whether latents of ``self`` and ``other`` live in the same space and may be
        mixed (see :meth:`differences`; placement such as ``device`` aside)."""
        return not self.differences(other)


def _short(value: Any) -> str:
    """Digests shortened for a one-line message; a missing value said as such."""
    if value is None:
        return "(not recorded)"
    text = str(value)
    return text[:12] if len(text) > 16 and all(c in "0123456789abcdef" for c in text) else text
