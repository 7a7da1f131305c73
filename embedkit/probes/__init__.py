"""Probes: what latents encode, measured. Held-out k-NN and linear-probe scores of label
columns beside a baseline, per dataset and per block of the vector (each stage of a timm
backbone with ``layers=``). Named ``probes`` so that ``embedkit.probe`` stays the function."""

from embedkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "measure": ["probe", "score"],
        "align": ["Aligned", "aligned", "carried_label_columns"],
        "blocks": ["Block", "vector_blocks"],
        "split": ["held_out_split"],
        "targets": ["Target", "label_columns", "target"],
    },
)
