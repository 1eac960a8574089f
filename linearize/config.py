"""LinearizeConfig: which linear attention replaces softmax, where, and with what options.

One small dataclass, saved inside the converted checkpoint's config.json under
``linearize``, so a reload rebuilds exactly the same modules.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

METHODS = ("hedgehog", "lizard", "gsa", "softmax")
FORMS = ("auto", "parallel", "chunked", "recurrent")


@dataclass
class LinearizeConfig:
    """How to linearize a model.

    method:          default attention for every layer: hedgehog | lizard | gsa | softmax.
    window:          sliding-window size of the softmax part (hedgehog, lizard).
    feature_dim:     Hedgehog feature-map width per half; the map outputs 2 * feature_dim.
    num_meta_tokens: learnable meta-memory key/value pairs every query attends to (lizard).
    gate_rank:       rank of the low-rank data-dependent gate projection (lizard, gsa).
    gate_max:        the log-decay per step lies in (-gate_max, 0): bounds forgetting, keeps the
                     chunked form finite in fp32 for chunk_size * gate_max < 80.
    num_slots:       memory slots of gated slot attention (gsa).
    chunk_size:      chunk length of the chunked form.
    softmax_layers:  layer indices kept as the original softmax attention.
    layer_methods:   per-layer override {layer_idx: method}, applied after ``method``.
    form:            which form training / full-sequence forwards use; "auto" = chunked.
    """

    method: str = "lizard"
    window: int = 64
    feature_dim: int = 64
    num_meta_tokens: int = 4
    gate_rank: int = 16
    gate_max: float = 1.0
    num_slots: int = 64
    chunk_size: int = 64
    softmax_layers: list[int] = field(default_factory=list)
    layer_methods: dict[int, str] = field(default_factory=dict)
    form: str = "auto"

    def __post_init__(self):
        self.layer_methods = {int(k): v for k, v in dict(self.layer_methods).items()}
        self.softmax_layers = sorted(int(i) for i in self.softmax_layers)
        self.validate()

    def validate(self) -> None:
        for m in [self.method, *self.layer_methods.values()]:
            if m not in METHODS:
                raise ValueError(f"unknown method {m!r}: choose one of {', '.join(METHODS)}")
        if self.form not in FORMS:
            raise ValueError(f"unknown form {self.form!r}: choose one of {', '.join(FORMS)}")
        if int(self.window) < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        for name in ("feature_dim", "gate_rank", "num_slots", "chunk_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.num_meta_tokens) < 0:
            raise ValueError(f"num_meta_tokens must be >= 0, got {self.num_meta_tokens}")
        if not self.gate_max > 0:
            raise ValueError(f"gate_max must be > 0, got {self.gate_max}")
        if self.chunk_size * self.gate_max >= 80:
            raise ValueError(
                f"chunk_size * gate_max = {self.chunk_size * self.gate_max} >= 80 would overflow the "
                "chunked form's in-chunk decay in fp32; lower one of them"
            )

    def method_for_layer(self, layer_idx: int) -> str:
        if layer_idx in self.layer_methods:
            return self.layer_methods[layer_idx]
        if layer_idx in self.softmax_layers:
            return "softmax"
        return self.method

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layer_methods"] = {str(k): v for k, v in self.layer_methods.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LinearizeConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown LinearizeConfig keys {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)
