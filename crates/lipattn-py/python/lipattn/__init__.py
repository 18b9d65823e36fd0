"""lipattn: how smooth is this attention layer, provably?

Attention as an operator on discrete probability measures of tokens, with exact derivatives,
exact optimal transport, certified Lipschitz upper bounds and attained lower bounds. NumPy arrays
in and out (float32 and float64; anything ``numpy.asarray`` accepts, and torch tensors);
``Model.from_transformers`` reads a live transformers model.
The computations run in Rust without the GIL. See docs/python.md in the repository.
"""

from ._lipattn import (
    AttentionLayer,
    FormatError,
    InvertibleBlock,
    Linearization,
    LocalConstant,
    Measure,
    Model,
    ModelError,
    NoConvergenceError,
    NumericalError,
    RotaryLayer,
    Transport,
    __version__,
    clustering,
    fixed_point,
    flow,
    ground_cost,
    identity_layer,
    invert,
    layer_norm_radius,
    max_memory,
    mean_field,
    random_layer,
    random_tokens,
    set_max_memory,
    sphere_sample,
    transport,
)

__all__ = [
    "AttentionLayer",
    "FormatError",
    "InvertibleBlock",
    "Linearization",
    "LocalConstant",
    "Measure",
    "Model",
    "ModelError",
    "NoConvergenceError",
    "NumericalError",
    "RotaryLayer",
    "Transport",
    "__version__",
    "clustering",
    "fixed_point",
    "flow",
    "ground_cost",
    "identity_layer",
    "invert",
    "layer_norm_radius",
    "max_memory",
    "mean_field",
    "random_layer",
    "random_tokens",
    "set_max_memory",
    "sphere_sample",
    "transport",
]
