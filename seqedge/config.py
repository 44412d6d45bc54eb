"""The model configuration: one frozen dataclass handed explicitly to every module.

Torch-free on purpose, so runtimes and manifests can read and validate it without the training stack.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

UpdateRule = Literal["gated", "delta"]
UPDATE_RULES: tuple[str, ...] = ("gated", "delta")
SUB_CHUNK = 16  # sub-chunk of the chunked scan: bounded gates keep exp(b_t - b_s) in range inside it

GATES = ("sigmoid", "softplus", "logsigmoid", "softplus_key")
BETAS = ("sigmoid", "dt", "none")
OUTPUT_ORDERS = ("norm_gate", "gate_norm")
QK_NORMS = ("rule", "rsqrt", "none")
OUT_GATE_ACTS = ("silu", "sigmoid")


@dataclass(frozen=True)
class MixerParts:
    """How the mixer's named parts are parametrised; the defaults are the native Sequential Attention mixer.

    - ``gate``: the log forget gate g. ``sigmoid``: ``g_min * sigmoid(W_up W_down x + b)`` per key dim (native;
      bounded, g >= g_min). ``softplus``: ``-exp(A_log) * softplus(W_dt x + dt_bias)`` per head (Mamba2, Gated
      DeltaNet; unbounded below, so the chunked scan takes its segment-sum form). ``logsigmoid``:
      ``logsigmoid(W_up W_down x + b) / gate_normalizer`` per key dim (GLA; unbounded below, as softplus).
      ``softplus_key``: ``-exp(A_log[h]) * softplus(W_up W_down x + dt_bias)`` per key dim, ``gate_rank`` wide in
      between, dt_bias one per key channel (KDA; unbounded like ``softplus``).
    - ``beta``: the input scale. ``sigmoid``: ``sigmoid(W_b x + b)`` per head; ``dt``: the softplus gate's step
      ``softplus(W_dt x + dt_bias)`` (Mamba2); ``none``: 1 (GLA). ``beta_scale`` multiplies the sigmoid beta
      (OLMo-hybrid's ``linear_allow_neg_eigval``: ``2 * sigmoid``, in (0, 2), so the delta rule's state map
      ``I - beta k k^T`` may have a negative eigenvalue).
    - ``num_key_heads``: heads of q and k (0: ``num_heads``); each is shared by ``num_heads / num_key_heads``
      consecutive value heads (Mamba2's B/C groups, grouped value heads of Gated DeltaNet).
    - ``short_conv``: q, k, v pass a short causal conv with SiLU whose tail is carried in the state (native);
      without it they are the plain projections and a layer's state is its scan matrix only (GLA).
    - ``conv_bias``: the short conv over q, k, v has a bias.
    - ``qk_norm``: how q and k are L2-normalised per head. ``rule``: ``x / max(|x|, 1e-6)`` iff the update rule is
      ``delta`` (native); ``rsqrt``: ``x * rsqrt(|x|^2 + 1e-6)`` (fla's and transformers' ``l2norm``: Gated
      DeltaNet, KDA); ``none``.
    - ``skip``: the read-out adds ``d * v`` per value channel (native; Mamba2's D per head, repeated per channel).
    - ``output``: ``norm_gate``: ``RMSNorm(o) * SiLU(W_r x)`` (native, Gated DeltaNet); ``gate_norm``:
      ``RMSNorm(o * SiLU(W_r x))`` (Mamba2's gated RMSNorm); the norm runs over groups of ``out_norm_size``
      channels (0: one head, ``head_v_dim``), with eps ``out_norm_eps`` (0: the model's ``norm_eps``; OLMo-hybrid's
      gated norm has its own).
    - ``out_gate_act``: the output gate's activation, ``silu`` (native, Gated DeltaNet, Mamba2) or ``sigmoid``
      (KDA). ``out_gate_rank``: 0: one linear ``W_r``; r > 0: the low-rank ``W_r2 W_r1 x + b`` through r channels,
      with a bias on the up-projection (KDA's g_a/g_b projections).
    - ``scale``: the read-out's q scale (0: ``1/sqrt(head_k_dim)``; Mamba2 reads with 1).
    - ``mlp``: blocks have a SwiGLU after the mixer (Mamba2's blocks have none).
    """

    gate: str = "sigmoid"
    beta: str = "sigmoid"
    gate_normalizer: float = 1.0
    num_key_heads: int = 0
    short_conv: bool = True
    conv_bias: bool = False
    qk_norm: str = "rule"
    skip: bool = True
    output: str = "norm_gate"
    out_norm_size: int = 0
    scale: float = 0.0
    mlp: bool = True
    out_gate_act: str = "silu"
    out_gate_rank: int = 0
    beta_scale: float = 1.0
    out_norm_eps: float = 0.0

    def __post_init__(self) -> None:
        for name, valid in (("gate", GATES), ("beta", BETAS), ("output", OUTPUT_ORDERS),
                            ("qk_norm", QK_NORMS), ("out_gate_act", OUT_GATE_ACTS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"mixer.{name} must be one of {list(valid)}, got {getattr(self, name)!r}")
        if self.beta == "dt" and self.gate != "softplus":
            raise ValueError(f"mixer.beta='dt' takes the step of mixer.gate='softplus', but mixer.gate is "
                             f"{self.gate!r}")
        for name in ("num_key_heads", "out_norm_size", "out_gate_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"mixer.{name} must be an integer >= 0 (0: the default), got {value!r}")
        if not self.gate_normalizer > 0:
            raise ValueError(f"mixer.gate_normalizer must be > 0, got {self.gate_normalizer}")
        if self.gate_normalizer != 1.0 and self.gate != "logsigmoid":
            raise ValueError(f"mixer.gate_normalizer divides the logsigmoid gate only, but mixer.gate is "
                             f"{self.gate!r}")
        if self.conv_bias and not self.short_conv:
            raise ValueError("mixer.conv_bias needs mixer.short_conv (there is no conv to add a bias to)")
        if not self.beta_scale > 0:
            raise ValueError(f"mixer.beta_scale must be > 0, got {self.beta_scale}")
        if self.beta_scale != 1.0 and self.beta != "sigmoid":
            raise ValueError(f"mixer.beta_scale scales the sigmoid beta only, but mixer.beta is {self.beta!r}")
        if not self.out_norm_eps >= 0:
            raise ValueError(f"mixer.out_norm_eps must be >= 0 (0: norm_eps), got {self.out_norm_eps}")
        if not self.scale >= 0:
            raise ValueError(f"mixer.scale must be >= 0 (0: 1/sqrt(head_k_dim)), got {self.scale}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MixerParts":
        return cls(**_known_fields(cls, data, "mixer"))


def _known_fields(cls: type, data: Any, what: str) -> dict[str, Any]:
    """``data`` if it is a dict of ``cls``'s fields only (a tampered or foreign config must not pass silently)."""
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}; valid fields are {sorted(known)}")
    return data


NATIVE_MIXER = MixerParts()
# Parts added after imported models' artifacts were first written: serialised only when they differ from their
# defaults (SequentialAttentionConfig.to_dict), so those artifacts keep their fingerprints.
LATER_MIXER_PARTS = ("beta_scale", "out_norm_eps")


@dataclass(frozen=True)
class SequentialAttentionConfig:
    """Shape and hyper-parameters of a Sequential Attention language model.

    The recurrent state per layer is ``[B, num_heads, head_k_dim, head_v_dim]`` (float32) plus a conv tail
    ``[B, conv_channels, conv_kernel - 1]`` (none without ``mixer.short_conv``); neither grows with context.
    """

    vocab_size: int = 259
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 3
    head_k_dim: int = 64
    head_v_dim: int = 64
    update_rule: UpdateRule = "gated"
    conv_kernel: int = 4
    gate_rank: int = 16
    g_min: float = -5.0
    chunk_size: int = 64
    mlp_ratio: float = 8.0 / 3.0
    mlp_multiple_of: int = 64
    intermediate_size: int = 0
    tie_embeddings: bool = True
    norm_eps: float = 1e-6
    init_std: float = 0.02
    gate_half_life_min: float = 1.0
    gate_half_life_max: float = 1.0e4
    mixer: MixerParts = NATIVE_MIXER

    def __post_init__(self) -> None:
        positive = ("vocab_size", "hidden_size", "num_layers", "num_heads", "head_k_dim", "head_v_dim",
                    "gate_rank", "chunk_size", "mlp_multiple_of")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.intermediate_size, int) or isinstance(self.intermediate_size, bool) \
                or self.intermediate_size < 0:
            raise ValueError(f"intermediate_size must be an integer >= 0 (0: from mlp_ratio), got "
                             f"{self.intermediate_size!r}")
        if self.update_rule not in UPDATE_RULES:
            raise ValueError(f"update_rule must be one of {list(UPDATE_RULES)}, got {self.update_rule!r}")
        if isinstance(self.mixer, dict):               # from JSON: the nested part descriptions
            object.__setattr__(self, "mixer", MixerParts.from_dict(self.mixer))
        if not isinstance(self.mixer, MixerParts):
            raise ValueError(f"mixer must be a MixerParts, got {type(self.mixer).__name__}")
        self._check_mixer()
        if self.mixer == NATIVE_MIXER and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.chunk_size % SUB_CHUNK:
            raise ValueError(f"chunk_size must be a multiple of {SUB_CHUNK} (the scan's sub-chunk), "
                             f"got {self.chunk_size}")
        if not isinstance(self.conv_kernel, int) or self.conv_kernel < 2:
            raise ValueError(f"conv_kernel must be an integer >= 2, got {self.conv_kernel!r}")
        if not -5.0 <= self.g_min < 0.0:
            raise ValueError(f"g_min must lie in [-5, 0) so exp(b_t - b_s) stays finite in a {SUB_CHUNK}-token "
                             f"sub-chunk, got {self.g_min}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not (self.norm_eps > 0 and self.init_std > 0):
            raise ValueError(f"norm_eps and init_std must be > 0, got {self.norm_eps}, {self.init_std}")
        if not 0 < self.gate_half_life_min <= self.gate_half_life_max:
            raise ValueError("gate_half_life_min and gate_half_life_max must satisfy 0 < min <= max, got "
                             f"{self.gate_half_life_min}, {self.gate_half_life_max}")

    def _check_mixer(self) -> None:
        m = self.mixer
        if m.num_key_heads and self.num_heads % m.num_key_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of mixer.num_key_heads "
                             f"({m.num_key_heads}): each key head serves a whole group of value heads")
        if m.out_norm_size and self.value_size % m.out_norm_size:
            raise ValueError(f"mixer.out_norm_size ({m.out_norm_size}) must divide num_heads * head_v_dim "
                             f"({self.value_size})")

    # derived sizes -------------------------------------------------------------------------------------
    @property
    def key_heads(self) -> int:
        """Heads of q and k (``mixer.num_key_heads``, else ``num_heads``)."""
        return self.mixer.num_key_heads or self.num_heads

    @property
    def key_size(self) -> int:
        """key heads * dk: width of q and k."""
        return self.key_heads * self.head_k_dim

    @property
    def bounded_gates(self) -> bool:
        """True when every log gate is >= g_min >= -5 (the native sigmoid gate): the scan's fast chunk form."""
        return self.mixer.gate == "sigmoid"

    @property
    def value_size(self) -> int:
        """H * dv: width of v and of the attention output."""
        return self.num_heads * self.head_v_dim

    @property
    def conv_channels(self) -> int:
        """Width of q, k and v together: the channels of the short causal conv and of its carried tail."""
        return 2 * self.key_size + self.value_size

    @property
    def mlp_hidden_size(self) -> int:
        """SwiGLU inner width: ``intermediate_size`` if set (imported models), else ``mlp_ratio * hidden_size``
        rounded up to ``mlp_multiple_of``."""
        if self.intermediate_size:
            return self.intermediate_size
        raw = int(self.mlp_ratio * self.hidden_size)
        return self.mlp_multiple_of * math.ceil(raw / self.mlp_multiple_of)

    # serialisation --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; the native mixer, an unset ``intermediate_size`` and mixer parts newer than the
        mixer itself at their defaults (:data:`LATER_MIXER_PARTS`) are left out, so configs (and their
        fingerprints, hence written artifacts) read as before those fields existed."""
        data = dataclasses.asdict(self)
        if self.mixer == NATIVE_MIXER:
            del data["mixer"]
        else:
            for name in LATER_MIXER_PARTS:
                if getattr(self.mixer, name) == getattr(NATIVE_MIXER, name):
                    del data["mixer"][name]
        if not self.intermediate_size:
            del data["intermediate_size"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SequentialAttentionConfig":
        """Build from a dict, rejecting unknown keys (a tampered or foreign config must not pass silently)."""
        return cls(**_known_fields(cls, data, "config"))

    @classmethod
    def from_json(cls, text: str) -> "SequentialAttentionConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"config is not valid JSON: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "SequentialAttentionConfig":
        """A named preset (``tiny`` ~2M, ``small`` ~25M, ``base`` ~125M parameters) with field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid presets are {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=192, num_layers=4, num_heads=3, head_k_dim=64, head_v_dim=64),
    "small": dict(hidden_size=512, num_layers=7, num_heads=4, head_k_dim=128, head_v_dim=128),
    "base": dict(hidden_size=768, num_layers=16, num_heads=6, head_k_dim=128, head_v_dim=128),
}
