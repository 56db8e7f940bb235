"""Settings of a VRP run: one frozen dataclass per measurement, gathered in :class:`VRPConfig`.

Defaults follow the paper (VRP.md); the fields marked **choice** fill its gaps.

Examples:
    >>> config = VRPConfig(consistency=ConsistencyConfig(k=5, ks=(5,)))
    >>> config.consistency.k_max, config.masking.fraction
    (5, 0.3)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Literal

from vlmlens.errors import DataError
from vlmlens.vrp.probes import ProbeConfig

__all__ = [
    "AblationConfig",
    "AttentionSweepConfig",
    "ConsistencyConfig",
    "DestructionConfig",
    "IdentifyConfig",
    "MaskingConfig",
    "VRPConfig",
]

LayerChoice = Literal["best_probe", "peak_visual"] | int
"""Which text layer an intervention targets: the best residual-probe layer, the peak
visual layer, or a fixed 0-based index."""


def _check_fraction_list(name: str, values: tuple[float, ...], *, closed: bool = False) -> None:
    if not values:
        raise DataError(f"{name} is empty; give at least one value.")
    upper_ok = (lambda v: v <= 1) if closed else (lambda v: v < 1)
    bad = [v for v in values if not (0 < v and upper_ok(v))]
    if bad:
        raise DataError(f"{name} must lie in (0, 1{']' if closed else ')'}, got {bad}.")


def _check_layer(name: str, layer: LayerChoice) -> None:
    if isinstance(layer, bool) or not (layer in ("best_probe", "peak_visual") or
                                       (isinstance(layer, int) and layer >= 0)):
        raise DataError(f"{name} must be 'best_probe', 'peak_visual' or a layer index >= 0, got {layer!r}.")


@dataclass(frozen=True, kw_only=True)
class MaskingConfig:
    """Causal patch masking: grey out the top / bottom / random share of patches.

    Attributes:
        fraction: The reported share of patches (paper: 30%).
        sensitivity: Shares swept to check the conclusion (must include ``fraction``).
        random_draws: Random patch sets per question at the reported share; the random
            control is the mean over them.
        sweep_draws: Random patch sets per question at the other shares swept (**choice**:
            2, to bound the run time; the sweep only reads the mean drop).
    """

    fraction: float = 0.3
    sensitivity: tuple[float, ...] = (0.2, 0.3, 0.4)
    random_draws: int = 10
    sweep_draws: int = 2

    def __post_init__(self) -> None:
        _check_fraction_list("MaskingConfig.sensitivity", self.sensitivity)
        _check_fraction_list("MaskingConfig.fraction", (self.fraction,))
        if self.fraction not in self.sensitivity:
            raise DataError(f"MaskingConfig.sensitivity {self.sensitivity} must include fraction={self.fraction}.")
        if self.random_draws < 1 or self.sweep_draws < 1:
            raise DataError(f"MaskingConfig needs random_draws and sweep_draws >= 1, got "
                            f"random_draws={self.random_draws}, sweep_draws={self.sweep_draws}.")

    @property
    def fractions(self) -> tuple[float, ...]:
        """Every share measured, sorted."""
        return tuple(sorted(set(self.sensitivity)))

    def draws(self, fraction: float) -> int:
        """Random patch sets per question at one share."""
        return self.random_draws if fraction == self.fraction else self.sweep_draws


@dataclass(frozen=True, kw_only=True)
class AttentionSweepConfig:
    """The settings the attention metrics are recomputed at, to see whether R_pb depends on them.

    Attributes:
        layers: Layer ranges of M (besides the reported one): ``"second_half"``, ``"all"``.
        percentiles: C_k thresholds (the reported one is 90).
        eps: DBSCAN radii in patches (the reported one is 1.5).
    """

    layers: tuple[Literal["second_half", "all"], ...] = ("second_half", "all")
    percentiles: tuple[float, ...] = (80.0, 90.0, 95.0)
    eps: tuple[float, ...] = (1.0, 1.5, 2.0)

    def __post_init__(self) -> None:
        if any(v not in ("second_half", "all") for v in self.layers):
            raise DataError(f"AttentionSweepConfig.layers takes 'second_half' / 'all', got {self.layers}.")
        if any(not 0 <= v <= 100 for v in self.percentiles) or any(not v > 0 for v in self.eps):
            raise DataError(f"AttentionSweepConfig needs percentiles in [0, 100] and eps > 0, got "
                            f"{self.percentiles}, {self.eps}.")

    def layer_columns(self) -> dict[str, str]:
        """Column suffix -> layer range: ``C_k`` and ``H_s_norm`` recomputed on M of those layers."""
        return {f"@{layers}": layers for layers in self.layers}

    def dbscan_columns(self) -> dict[str, tuple[float, float]]:
        """Column suffix -> (percentile, eps): ``C_k`` of the reported M with other DBSCAN settings."""
        return {f"@p{p:g}_eps{e:g}": (p, e) for p in self.percentiles for e in self.eps}


@dataclass(frozen=True, kw_only=True)
class ConsistencyConfig:
    """Self-consistency: K sampled answers per question from one shared prefill.

    Attributes:
        k: The reported K (paper: 10).
        ks: K values swept (each uses the first K of ``k_max`` samples); must include ``k``.
        temperature: Sampling temperature.
        top_p: Nucleus mass.
        max_new_tokens: Tokens decoded per answer (greedy and sampled).
    """

    k: int = 10
    ks: tuple[int, ...] = (5, 7, 10, 12, 15)
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 3

    def __post_init__(self) -> None:
        if self.k < 1 or any(v < 1 for v in self.ks):
            raise DataError(f"ConsistencyConfig needs k and ks >= 1, got k={self.k}, ks={self.ks}.")
        if self.k not in self.ks:
            raise DataError(f"ConsistencyConfig.ks {self.ks} must include k={self.k}.")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise DataError(f"ConsistencyConfig needs temperature > 0 and top_p in (0, 1], got "
                            f"temperature={self.temperature}, top_p={self.top_p}.")
        if self.max_new_tokens < 1:
            raise DataError(f"ConsistencyConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}.")

    @property
    def k_max(self) -> int:
        """Samples drawn per question (the largest K swept)."""
        return max(self.ks)


@dataclass(frozen=True, kw_only=True)
class AblationConfig:
    """Reliability-neuron ablation: zero the top-k probe-ranked dimensions vs k random ones.

    Attributes:
        k: The reported k (paper: 5).
        ks: k values swept on the MLP output (the true MLP neurons are ablated at ``k``
            only, to bound the run time); must include ``k``.
        random_draws: Random control sets at the reported k (their drops are averaged, and
            compared with the top-k per question by an image sign-flip test).
        sweep_draws: Random control sets at the other k swept (2 bounds the run time).
        layer: Target layer (**choice**: the best residual-probe layer).
        C: Inverse strength of the L2 probe that orders the dimensions after the L1 path's top k
            (the top k come from the L1 path, :func:`vlmlens.circuits.probe.l1_path`).
    """

    k: int = 5
    ks: tuple[int, ...] = (3, 4, 5, 6, 7)
    random_draws: int = 10
    sweep_draws: int = 2
    layer: LayerChoice = "best_probe"
    C: float = 0.1

    def __post_init__(self) -> None:
        if self.sweep_draws < 1:
            raise DataError(f"AblationConfig.sweep_draws must be >= 1, got {self.sweep_draws}.")
        if self.k < 1 or any(v < 1 for v in self.ks) or self.k not in self.ks:
            raise DataError(f"AblationConfig needs k >= 1 and ks >= 1 including k, got k={self.k}, ks={self.ks}.")
        if self.random_draws < 1:
            raise DataError(f"AblationConfig.random_draws must be >= 1, got {self.random_draws}.")
        if not self.C > 0:
            raise DataError(f"AblationConfig.C must be > 0, got {self.C}.")
        _check_layer("AblationConfig.layer", self.layer)


@dataclass(frozen=True, kw_only=True)
class DestructionConfig:
    """Dimension destruction: ablate a growing share of one layer's dimensions.

    Attributes:
        n_dims: The smallest point of the curve, a count of dimensions (paper: 5).
        fractions: Shares of the width destroyed (paper: 1, 5, 10, 25, 50, 75%).
        site: ``"resid_post"`` (ranked by the hidden-state probe's features; **choice**)
            or ``"mlp_out"``.
        mode: ``"zero"`` or ``"mean"`` (the dataset mean at the last position).
        layer: Target layer (**choice**: the best probe layer).
        random_draws: Random control sets per point of the curve (**choice**: 3; the curve's
            CIs resample images, averaging the draws per question).
        C: Inverse strength of the L2 probe that orders the dimensions after the L1 path's top k
            (the top k come from the L1 path, :func:`vlmlens.circuits.probe.l1_path`).
    """

    n_dims: int = 5
    fractions: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75)
    site: Literal["resid_post", "mlp_out"] = "resid_post"
    mode: Literal["zero", "mean"] = "zero"
    layer: LayerChoice = "best_probe"
    random_draws: int = 3
    C: float = 0.1

    def __post_init__(self) -> None:
        if self.n_dims < 1:
            raise DataError(f"DestructionConfig.n_dims must be >= 1, got {self.n_dims}.")
        _check_fraction_list("DestructionConfig.fractions", self.fractions, closed=True)
        if self.site not in ("resid_post", "mlp_out"):
            raise DataError(f"DestructionConfig.site must be 'resid_post' or 'mlp_out', got {self.site!r}.")
        if self.mode not in ("zero", "mean"):
            raise DataError(f"DestructionConfig.mode must be 'zero' or 'mean', got {self.mode!r}.")
        if self.random_draws < 1 or not self.C > 0:
            raise DataError(f"DestructionConfig needs random_draws >= 1 and C > 0, got "
                            f"random_draws={self.random_draws}, C={self.C}.")
        _check_layer("DestructionConfig.layer", self.layer)

    def counts(self, width: int) -> tuple[int, ...]:
        """Dimensions destroyed at each point of the curve for a ``width``-wide site, sorted.

        Examples:
            >>> DestructionConfig().counts(128)
            (1, 5, 6, 13, 32, 64, 96)
        """
        raw = [min(self.n_dims, width)] + [max(1, min(width, round(f * width))) for f in self.fractions]
        return tuple(sorted(set(raw)))


@dataclass(frozen=True, kw_only=True)
class IdentifyConfig:
    """The object-identification readout of the neuron ablation (:mod:`vlmlens.vrp.identify`).

    Attributes:
        enabled: Ask each image "What objects are in the image?", clean and under each
            reported-k ablation, and score POPE's questions from the list (off by default:
            one generation per image and condition).
        max_new_tokens: Tokens generated per answer (a list of objects; real VLMs answer in
            sentences).
    """

    enabled: bool = False
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise DataError(f"IdentifyConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}.")


@dataclass(frozen=True, kw_only=True)
class VRPConfig:
    """Parameters of a VRP run (VRP.md marks the choices).

    Attributes:
        batch_size: Questions per forward. Batches are fixed by dataset order, so a resumed
            run sees the same batches as an uninterrupted one.
        attention_layers: Text layers of the map M: ``"family"`` (the paper's per family:
            LLaVA the second half, PaliGemma and Qwen2-VL all), ``"second_half"`` or ``"all"``.
        attention_sweep: Other layer ranges and DBSCAN settings the attention R_pb is
            recomputed at.
        seed: Seeds masks, sampling, probes, random controls and bootstraps.
        suffix: Append POPE's "Answer the question using a single word or phrase." to every
            question (**choice**; off by default because the toy zoo was trained mostly without it).
        n_resamples: Bootstrap resamples of every CI.
        n_examples: Attention maps kept for the report.
        interventions: Run the neuron-ablation and destruction phase (needs both outcomes
            among the greedy answers).
        masking: Patch masking settings.
        consistency: Self-consistency settings.
        ablation: Neuron ablation settings.
        destruction: Dimension destruction settings.
        identify: The object-identification readout of the neuron ablation.
        probe: The logistic hidden-state probe.
        mlp_probe: The 2-layer MLP probe (workshop paper).
    """

    batch_size: int = 8
    attention_layers: Literal["family", "second_half", "all"] = "family"
    attention_sweep: AttentionSweepConfig = field(default_factory=AttentionSweepConfig)
    seed: int = 0
    suffix: bool = False
    n_resamples: int = 1000
    n_examples: int = 4
    interventions: bool = True
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    destruction: DestructionConfig = field(default_factory=DestructionConfig)
    identify: IdentifyConfig = field(default_factory=IdentifyConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    mlp_probe: ProbeConfig = field(default_factory=lambda: ProbeConfig(kind="mlp"))

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.attention_layers not in ("family", "second_half", "all"):
            raise DataError(f"attention_layers must be 'family', 'second_half' or 'all', got {self.attention_layers!r}")
        if self.seed < 0 or self.n_resamples < 1 or self.n_examples < 0:
            raise DataError(f"VRPConfig needs seed >= 0, n_resamples >= 1 and n_examples >= 0, got seed={self.seed}, "
                            f"n_resamples={self.n_resamples}, n_examples={self.n_examples}.")
        if (self.probe.test_size, self.probe.seed) != (self.mlp_probe.test_size, self.mlp_probe.seed):
            raise DataError(f"VRPConfig.probe and mlp_probe must share one held-out split (test_size, seed), got "
                            f"{(self.probe.test_size, self.probe.seed)} and "
                            f"{(self.mlp_probe.test_size, self.mlp_probe.seed)}; set both alike.")
        if self.probe.kind != "logistic" or self.mlp_probe.kind != "mlp":
            raise DataError(f"VRPConfig.probe must be a logistic ProbeConfig and mlp_probe an MLP one, got "
                            f"{self.probe.kind!r} and {self.mlp_probe.kind!r}.")

    def to_dict(self) -> dict:
        """JSON-ready nested dict of every setting."""
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> VRPConfig:
        """The defaults with some settings changed: the inverse of :meth:`to_dict`, and partial.

        Nested settings are nested objects; a nested object changes only the keys it names.

        Examples:
            >>> config = VRPConfig.from_dict({"seed": 3, "masking": {"random_draws": 2}})
            >>> config.seed, config.masking.random_draws, config.masking.fraction
            (3, 2, 0.3)

        Raises:
            DataError: on a key that is not a setting (the message lists the valid ones), or a
                value the setting refuses.
        """
        return _override(cls(), values, "VRPConfig")


def _check_kind(where: str, current: Any, value: Any) -> None:
    """A JSON value of the default's kind: true/false for flags, whole numbers for counts, lists for lists."""
    if current is None or isinstance(current, str):  # optional settings and named choices: validated on construction
        return
    if isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(current, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, (list, tuple))
    if not ok:
        kind = {bool: "true or false", int: "a whole number", float: "a number"}.get(type(current), "a list")
        raise DataError(f"{where} must be {kind} (default {current!r}), got {value!r}.")


def _override(base: Any, values: Any, where: str) -> Any:
    """``base`` (a frozen dataclass) with the settings in ``values`` replaced, recursively."""
    if not isinstance(values, Mapping):
        raise DataError(f"{where} must be a JSON object of its settings, got {values!r}.")
    names = [f.name for f in fields(base)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise DataError(f"{where} has no setting {', '.join(map(repr, unknown))}; its settings are {', '.join(names)}.")
    changes = {}
    for key, value in values.items():
        current = getattr(base, key)
        if is_dataclass(current):
            changes[key] = _override(current, value, f"{where}.{key}")
            continue
        _check_kind(f"{where}.{key}", current, value)
        changes[key] = tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value
    try:
        return replace(base, **changes)
    except DataError:
        raise
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: a setting has a value of the wrong type ({err}); see {type(base).__name__}.") from err
