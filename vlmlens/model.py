"""HookedVLM: one named-hook model over LLaVA, PaliGemma and Qwen2-VL, built on nnsight.

Examples:
    >>> from vlmlens.testing import tiny_vlm, tiny_images
    >>> model = tiny_vlm("llava")
    >>> batch = model.prepare(tiny_images(1), ["Is there a cat in the image?"])
    >>> with model.trace(batch):
    ...     resid = model.envoy("text.blocks.0.hook_resid_post").output.save()
    >>> tuple(resid.shape)[-1] == model.d_model
    True
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, no_type_check

import nnsight
import torch
from torch import nn

from vlmlens.adapters import Adapter, get_adapter
from vlmlens.context import Call
from vlmlens.errors import InputError, SiteNotFoundError
from vlmlens.hooks import InstalledHooks, install
from vlmlens.inputs import Batch, prepare_batch
from vlmlens.sites import BLOCK_POINTS, Point, Site, Tower, as_point, site_names
from vlmlens.tl import TLSurface

__all__ = ["HookedVLM", "Generation", "TowerAccessor"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    """Generated continuations.

    Attributes:
        texts: decoded new text, ``batch * num_return_sequences`` entries (sample-major).
        token_ids: the new tokens, ``(batch * num_return_sequences, new_tokens)``.
        scores: log-probabilities of the chosen tokens, same shape as ``token_ids``.
    """

    texts: tuple[str, ...]
    token_ids: torch.Tensor
    scores: torch.Tensor


class _LayerIndexer:
    def __init__(self, model: HookedVLM, tower: Tower, point: Point) -> None:
        self._model, self._tower, self._point = model, tower, point

    @no_type_check
    def __getitem__(self, layer: int) -> Site:
        return self._model.site(Site(self._tower, self._point, self._model._layer(self._tower, layer)))

    def __len__(self) -> int:
        return self._model.n_layers if self._tower is Tower.TEXT else self._model.n_vision_layers


class TowerAccessor:
    """Attribute access to sites: ``model.text.resid_post[3]``, ``model.vision.pattern[0]``, ``model.text.embed``."""

    def __init__(self, model: HookedVLM, tower: Tower) -> None:
        self._model, self._tower = model, tower

    def __getattr__(self, name: str) -> Site | _LayerIndexer:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            point = as_point(name)
        except SiteNotFoundError as err:
            raise AttributeError(str(err)) from None
        if point in BLOCK_POINTS:
            return _LayerIndexer(self._model, self._tower, point)
        return self._model.site(Site(self._tower, point))

    def __dir__(self) -> list[str]:
        return sorted({s.short for s in self._model.sites() if s.tower is self._tower})


class HookedVLM(TLSurface):
    """A Hugging Face VLM with a named hook at every head, residual stream and neuron.

    Build it with :meth:`from_pretrained` or :meth:`from_hf`. Sites are named the same
    way in every family (see :mod:`vlmlens.sites`); :meth:`envoy` gives the nnsight
    envoy of a site inside :meth:`trace`, and the free functions in :mod:`vlmlens.ops`
    cache, ablate, patch and steer through them.

    Attributes:
        hf_model: the wrapped transformers model (hook points installed, eager attention).
        processor: its processor.
        adapter: the family adapter.
        nn: the nnsight wrapper of ``hf_model``.
    """

    @no_type_check
    def __init__(self, hf_model: nn.Module, processor: Any, *, check: bool = True,
                 adapter: Adapter | None = None) -> None:
        if not isinstance(hf_model, nn.Module) or not hasattr(hf_model, "config"):
            raise InputError(f"HookedVLM wraps a transformers model, got a {type(hf_model).__name__}, which is not a "
                             "supported vision-language model; load one with from_pretrained()")
        self.adapter: Adapter = adapter or get_adapter(type(hf_model).__name__, _text_model_type(hf_model.config))
        self.hf_model = hf_model.eval()
        self.processor = processor
        self._hooks: InstalledHooks
        self._hooks, self.n_layers, self.n_vision_layers = install(hf_model, self.adapter)
        self.nn = nnsight.NNsight(hf_model)
        self._sites = site_names(self.n_layers, self.n_vision_layers)
        self._order = {site: i for i, site in enumerate(self._sites)}
        self.text = TowerAccessor(self, Tower.TEXT)
        self.vision = TowerAccessor(self, Tower.VISION)
        self.projector = TowerAccessor(self, Tower.PROJECTOR)
        if check:
            try:
                self.check_sites()
            except Exception:
                self.unwrap()  # leave the caller's model as it was
                raise

    # ---------------------------------------------------------------- loading
    @classmethod
    @no_type_check
    def from_hf(cls, hf_model: nn.Module, processor: Any, *, check: bool = True,
                adapter: Adapter | None = None) -> HookedVLM:
        """Wrap an already loaded transformers model and its processor.

        Args:
            hf_model: a supported ``...ForConditionalGeneration`` model.
            processor: its processor.
            check: run the load-time site check (:meth:`check_sites`).
            adapter: a family adapter to use instead of the registered one (for new families).
        """
        return cls(hf_model, processor, check=check, adapter=adapter)

    @classmethod
    @no_type_check
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        device_map: str | dict | None = None,
        **kwargs: Any,
    ) -> HookedVLM:
        """Load a checkpoint: a zoo name (``toy-llava``), a hub id or a local directory.

        Args:
            name_or_path: e.g. ``"llava-hf/llava-1.5-7b-hf"``, ``"toy-paligemma"`` or a path.
            dtype: parameter dtype: a torch dtype or a name such as ``"bfloat16"``/``"bf16"``
                (default: the checkpoint's, fp32 on CPU).
            device: move the model here after loading (ignored with ``device_map``).
            device_map: passed to transformers (``"auto"`` shards over GPUs).
            **kwargs: passed to ``from_pretrained`` of the model class.

        Raises:
            LoadError: an unknown zoo name, a missing directory, or a hub id that cannot be read.
            InputError: an unknown dtype.
        """
        import transformers
        from transformers import AutoConfig, AutoProcessor

        from vlmlens.loading import load_error, parse_dtype, resolve_checkpoint

        path = resolve_checkpoint(name_or_path)
        torch_dtype = parse_dtype(dtype)
        try:
            config = AutoConfig.from_pretrained(path)
        except OSError as err:
            raise load_error(path, err) from err
        architecture = (config.architectures or [type(config).__name__])[0]
        adapter = get_adapter(architecture, _text_model_type(config))
        model_cls = getattr(transformers, adapter.architecture)
        load_kwargs: dict[str, Any] = dict(kwargs)
        if torch_dtype is not None:
            load_kwargs["dtype"] = torch_dtype
        if device_map is not None:
            load_kwargs["device_map"] = device_map
        hf_model = model_cls.from_pretrained(path, **load_kwargs)
        if device is not None and device_map is None:
            hf_model = hf_model.to(device)
        try:
            processor = AutoProcessor.from_pretrained(path)
        except (ImportError, ValueError, TypeError) as err:
            # Qwen2-VL's processor insists on a torchvision video processor; the zoo loader
            # builds the same processor class without one (images only).
            from vlmlens.zoo.io import load_processor

            logger.info("AutoProcessor failed (%s); loading an image-only processor", err)
            processor = load_processor(path)
        return cls(hf_model, processor)

    # ---------------------------------------------------------------- config
    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def device(self) -> torch.device:
        """Where inputs go: the first parameter not offloaded (accelerate keeps offloaded ones on ``meta``)."""
        placed = (p.device for p in self.hf_model.parameters() if p.device.type != "meta")
        return next(placed, torch.device("cpu"))

    @property
    def text_config(self) -> Any:
        return getattr(self.hf_model.config, self.adapter.text.config)

    @property
    def vision_config(self) -> Any:
        return getattr(self.hf_model.config, self.adapter.vision.config)

    @property
    def d_model(self) -> int:
        return self.text_config.hidden_size

    @property
    def n_heads(self) -> int:
        return getattr(self.text_config, self.adapter.text.n_heads)

    @property
    def n_kv_heads(self) -> int:
        name = self.adapter.text.n_kv_heads
        return getattr(self.text_config, name) if name else self.n_heads

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def module(self, path: str) -> nn.Module:
        """A submodule of the wrapped model by dotted path."""
        return self.hf_model.get_submodule(path)

    def block_module(self, tower: Tower | str, layer: int, part: str) -> nn.Module:
        """A named part of one block, resolved through the adapter (same names in every family).

        Args:
            tower: ``"text"`` or ``"vision"``.
            layer: block index.
            part: ``attn``, ``attn_norm``, ``mlp``, ``mlp_norm``, ``mlp_in`` (gate / fc1),
                ``mlp_down`` (down / fc2), ``o_proj``, and where the block has them
                ``attn_out_norm`` / ``mlp_out_norm`` (Gemma-2's norms after each branch),
                ``mlp_up`` (a gated MLP's up projection), ``q_proj`` / ``k_proj`` / ``v_proj``.
        """
        tower = Tower(tower)
        spec = self.adapter.text if tower is Tower.TEXT else self.adapter.vision
        b = spec.block
        paths = {"attn": b.attn, "attn_norm": b.attn_norm, "mlp": b.mlp, "mlp_norm": b.mlp_norm,
                 "mlp_in": f"{b.mlp}.{b.mlp_in}", "mlp_down": f"{b.mlp}.{b.mlp_down}", "o_proj": f"{b.attn}.{b.o_proj}"}
        optional = {"attn_out_norm": b.attn_out_norm, "mlp_out_norm": b.mlp_out_norm,
                    "mlp_up": b.mlp_up and f"{b.mlp}.{b.mlp_up}", "q_proj": b.q_proj and f"{b.attn}.{b.q_proj}",
                    "k_proj": b.k_proj and f"{b.attn}.{b.k_proj}", "v_proj": b.v_proj and f"{b.attn}.{b.v_proj}"}
        paths |= {name: path for name, path in optional.items() if path is not None}
        if part not in paths:
            raise SiteNotFoundError(f"unknown block part {part!r}; valid parts: {', '.join(paths)}")
        return self.module(f"{spec.layers}.{self._layer(tower, layer)}.{paths[part]}")

    @property
    def unembed(self) -> nn.Module:
        return self.module(self.adapter.lm_head)

    @property
    def final_norm(self) -> nn.Module:
        return self.module(self.adapter.text.final_norm)

    # ---------------------------------------------------------------- sites
    def sites(self) -> list[Site]:
        """Every site of this model, in the order the forward pass reaches them."""
        return list(self._sites)

    @no_type_check
    def _layer(self, tower: Tower, layer: int) -> int:
        n = self.n_layers if tower is Tower.TEXT else self.n_vision_layers
        if not isinstance(layer, int) or not -n <= layer < n:
            raise SiteNotFoundError(
                f"layer {layer!r} is out of range for the {tower.value} tower: valid layers are 0..{n - 1} "
                f"(or -{n}..-1 from the end)"
            )
        return layer % n

    @no_type_check
    def site(self, site: Site | str) -> Site:
        """Parse a site and check it exists on this model (layer range included).

        Raises:
            SiteNotFoundError: unknown name or layer out of range; the message names the valid options.
        """
        site = Site.parse(site)
        if site.layer is not None:
            self._layer(site.tower, site.layer)
        if site not in self._order:
            raise SiteNotFoundError(f"site {site} does not exist on this {self.family} model")
        return site

    def site_order(self, site: Site) -> int:
        """Position of a site in forward order (for sorting interventions)."""
        return self._order[site]

    def hook_path(self, site: Site | str) -> str:
        """Dotted module path (from ``hf_model``) of a site's hook point."""
        return self._hooks.paths[self.site(site)]

    @no_type_check
    def runs_per_image(self, site: Site | str) -> bool:
        """Whether a site fires once per image in a forward (Qwen2-VL's vision q/k/v/scores/pattern).

        Qwen2-VL's ViT packs all images into one sequence but attends within each image
        separately, so its attention internals are computed, and hooked, image by image.
        """
        site = self.site(site)
        return site.tower is Tower.VISION and not self.adapter.vision.batched and site.point in (
            Point.Q, Point.K, Point.V, Point.ATTN_SCORES, Point.PATTERN)

    @no_type_check
    def envoy(self, site: Site | str, *, per_image: bool = False) -> Any:
        """The nnsight envoy of a site's hook point; use ``.output`` inside :meth:`trace`.

        Args:
            site: the site.
            per_image: acknowledge that the site fires once per image (see
                :meth:`runs_per_image`); its ``.output`` is then the first image's, and
                ``for step in tracer.iter[:]:`` visits every image in order.

        Raises:
            InputError: the site fires once per image and ``per_image`` was not set
                (reading ``.output`` would silently give the first image only).
        """
        parsed = self.site(site)
        if parsed.point is Point.RESULT and not self._hooks.stack.results.get((parsed.tower, parsed.layer)):
            raise InputError(
                f"{parsed} is computed only where a call asks for it (it costs head x memory). Wrap the trace in "
                "`with model.result_hooks():` (or model.result_hooks([(tower, layer)])), or use run_with_cache"
            )
        if (parsed.point.pattern_shaped and self.attn_implementation != "eager"
                and not self._hooks.stack.patterns.get((parsed.tower, parsed.layer))):
            raise InputError(
                f"{parsed} is only computed where a call asks for it: this model attends with "
                f"{self.attn_implementation}, which never forms the pattern. Wrap the trace in "
                "`with model.patterns():` (or model.patterns([(tower, layer)])), or use run_with_cache"
            )
        if self.runs_per_image(site) and not per_image:
            raise InputError(
                f"{self.site(site)} runs once per image in {self.adapter.architecture} (its vision tower attends "
                "image by image), so .output would be the first image only. Use run_with_cache (one row per image), "
                "or pass per_image=True and read every image with `for step in tracer.iter[:]:` inside the trace"
            )
        envoy = self.nn
        for part in self.hook_path(site).split("."):
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
        return envoy

    @contextlib.contextmanager
    @no_type_check
    def result_hooks(self, layers: Iterable[Any] | None = None) -> Iterator[None]:
        """Compute per-head ``attn.hook_result`` while inside (all layers, or the given ones).

        Per-head results cost ``batch seq head d_model`` memory, so they are computed only
        for layers some active call requests. Requests nest: an inner context adds layers
        and leaves the outer ones on when it exits.
        """
        layers = self._all_layers() if layers is None else self._layer_keys(layers)
        with self._hooks.stack.requesting("result", layers):
            yield

    @contextlib.contextmanager
    @no_type_check
    def patterns(self, layers: Iterable[Any] | None = None) -> Iterator[None]:
        """Compute attention patterns (``attn.hook_pattern``) while inside (all layers, or the given ones).

        The model attends with the kernel it was loaded with (SDPA by default), which never
        forms the pattern; requested layers attend eagerly instead, with the pattern routed
        through its hook point. ``run_with_cache`` and interventions request the layers they
        touch; wrap a raw :meth:`trace` that reads patterns in this context.
        """
        layers = self._all_layers() if layers is None else self._layer_keys(layers)
        with self._hooks.stack.requesting("pattern", layers):
            yield

    def _layer_keys(self, layers: Any) -> list[tuple[Tower, int]]:
        """``(tower, layer)`` keys from pairs (negative layers count from the end), Sites or site names."""
        if isinstance(layers, (str, Site)) or not isinstance(layers, Iterable):
            raise InputError(f"layers must be a list of (tower, layer) pairs or sites, got {layers!r}")
        keys = []
        for item in layers:
            if isinstance(item, (str, Site)):
                site = self.site(item)
                if site.layer is None:
                    raise InputError(f"{site} belongs to no block; give block sites or (tower, layer) pairs")
                keys.append((site.tower, site.layer))
            elif isinstance(item, tuple) and len(item) == 2 and str(item[0]) in ("text", "vision"):
                tower = Tower(str(item[0]))
                keys.append((tower, self._layer(tower, item[1])))
            else:
                raise InputError(f"{item!r} is not a (tower, layer) pair such as ('text', 3), nor a site name")
        return keys

    def _all_layers(self) -> list[tuple[Tower, int]]:
        return [(tower, layer) for tower, n in ((Tower.TEXT, self.n_layers), (Tower.VISION, self.n_vision_layers))
                for layer in range(n)]

    @property
    def attn_implementation(self) -> str:
        """The attention kernel the model was loaded with (``"sdpa"`` or ``"eager"``)."""
        return self.text_config._attn_implementation.removeprefix("vlmlens_")

    def unwrap(self) -> nn.Module:
        """Remove every vlmlens hook and hook point and return the plain transformers model.

        The model's attention implementation is restored to what it was before wrapping.
        This HookedVLM cannot be used afterwards.
        """
        self._hooks.remove(self.hf_model)
        self._sites = []
        self._order = {}
        return self.hf_model

    @property
    def unused_vision_layers(self) -> tuple[int, ...]:
        """Vision blocks whose output never reaches the language model (LLaVA reads layer -2).

        Editing them changes nothing downstream; interventions there log a warning.
        """
        attr = self.adapter.vision_feature_layer_attr
        feature = getattr(self.hf_model.config, attr, None) if attr else None
        if not isinstance(feature, int):
            return ()
        last = feature % (self.n_vision_layers + 1)  # hidden_states has n + 1 entries (embeddings first)
        return tuple(range(last, self.n_vision_layers))

    @no_type_check
    def hooks(self, interventions: Sequence[Any], batch: Batch | None = None) -> contextlib.AbstractContextManager:
        """A context manager applying interventions to every forward inside it.

        Examples:
            >>> from vlmlens.ops import Ablate
            >>> with model.hooks([Ablate(site="text.blocks.0.hook_attn_out")], batch):
            ...     logits = model.forward(batch)

        Every hook is removed on exit, also when the block raises.
        """
        from vlmlens.ops.interventions import applied

        return applied(self, interventions, batch.layout if batch is not None else None)

    # ---------------------------------------------------------------- running
    @no_type_check
    def prepare(
        self,
        images: Any,
        questions: Sequence[str] | str,
        *,
        suffix: bool = False,
        padding_side: Literal["left", "right"] = "left",
    ) -> Batch:
        """Apply the family's prompt template and processor; return tensors and their TokenLayout.

        Args:
            images: one PIL image per question (or a list of images per question).
            questions: the question texts.
            suffix: append "Answer the question using a single word or phrase."
            padding_side: pad a batch on the left (default, right for generation) or right.
        """
        batch = prepare_batch(
            self.adapter, self.hf_model.config, self.processor, images, questions,
            suffix=suffix, padding_side=padding_side,
        )
        return batch.to(self.device)

    @no_type_check
    def _inputs(self, batch: Batch | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if isinstance(batch, Batch):
            return batch.inputs
        if isinstance(batch, dict) and "input_ids" in batch:
            return dict(batch)
        raise InputError(f"expected a Batch from model.prepare() or a dict of processor tensors, got {type(batch).__name__}")

    @no_type_check
    def forward(self, batch: Batch | dict[str, torch.Tensor], *, last: bool = False) -> torch.Tensor:
        """Plain forward (no tracing): logits ``batch seq vocab``.

        With ``last``, only each sample's last prompt position (the answer's logits):
        ``batch vocab``, computed by HF's ``logits_to_keep`` so the unembedding runs on
        those positions only (a 7B model's full logits take gigabytes in a stacked sweep).
        Equal to the full logits at those positions up to float rounding. A batch whose
        inputs are ``copies`` stacked copies of its layout (:func:`vlmlens.ops.sweep`) is
        read copy-major.
        """
        with torch.no_grad():
            return self._logits(batch, last=last)

    @no_type_check
    def _logits(self, batch: Batch | dict[str, torch.Tensor], *, last: bool = False) -> torch.Tensor:
        """One HF call's logits (grad mode as the caller set it): ``batch seq vocab``, or with
        ``last`` each sample's answer logits ``batch vocab`` (:meth:`last_logits`)."""
        inputs = self._inputs(batch)
        if not last:
            return self.hf_model(**inputs).logits
        keep, pick = self.last_logits(batch)
        return pick(self.hf_model(**inputs, logits_to_keep=keep).logits)

    @no_type_check
    def last_logits(self, batch: Batch) -> tuple[torch.Tensor, Any]:
        """``(keep, pick)``: HF's ``logits_to_keep`` for each sample's last prompt position, and
        ``pick(logits) -> batch vocab`` reading them from the kept columns.

        One source of truth for "the answer's logits" wherever only those are computed.
        """
        if not isinstance(batch, Batch):
            raise InputError("last-position logits need a Batch from model.prepare(): its layout names each "
                             "sample's last prompt position")
        rows, per_copy = batch.inputs["input_ids"].shape[0], len(batch.layout.last_prompt)
        if rows % per_copy:
            raise InputError(f"the batch has {rows} rows, not a whole number of copies of its {per_copy} samples")
        positions = torch.as_tensor(batch.layout.last_prompt).repeat(rows // per_copy)
        keep = torch.unique(positions)  # sorted; one column for left padding
        columns = torch.searchsorted(keep, positions)

        def pick(logits: torch.Tensor) -> torch.Tensor:
            if logits.shape[1] != len(keep):  # a model class that ignores logits_to_keep
                raise InputError(f"{type(self.hf_model).__name__} returned logits for {logits.shape[1]} positions "
                                 f"where logits_to_keep asked for {len(keep)}; it does not support last-position "
                                 "logits, use last=False")
            return logits[torch.arange(rows, device=logits.device), columns.to(logits.device)]

        return keep, pick

    __call__ = forward

    @no_type_check
    def run_with_cache(self, batch: Batch | dict[str, torch.Tensor], *, names_filter: Any = None,
                       **kwargs: Any) -> tuple[torch.Tensor, Any]:
        """:func:`vlmlens.ops.run_with_cache` on this model (as TransformerLens's method).

        ``names_filter`` (TransformerLens's): a name, a list of names, or a predicate on names
        (text-tower sites under TL names), instead of ``sites=``.
        """
        from vlmlens.ops.cache import run_with_cache

        if names_filter is not None:
            if "sites" in kwargs:
                raise InputError("give sites= or names_filter=, not both")
            if callable(names_filter):
                kwargs["sites"] = self.hook_matches(names_filter)
            else:
                kwargs["sites"] = [names_filter] if isinstance(names_filter, (str, Site)) else list(names_filter)
        return run_with_cache(self, batch, **kwargs)

    def trace(self, batch: Batch | dict[str, torch.Tensor], **kwargs: Any) -> Any:
        """An nnsight tracing context over one forward of ``batch``.

        Inside it, ``model.envoy(site).output`` reads or replaces a site (in forward order).
        """
        return self.nn.trace(**self._inputs(batch), **kwargs)

    @no_type_check
    def generate(
        self,
        batch: Batch | dict[str, torch.Tensor],
        max_new_tokens: int = 8,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        num_return_sequences: int = 1,
        interventions: Sequence[Any] = (),
        seed: int | None = None,
    ) -> Generation:
        """Generate continuations; interventions stay active at every decoding step.

        The prompt (and image) is encoded once per sample; ``num_return_sequences``
        samples share that prefix computation's inputs.
        """
        from vlmlens.ops.interventions import applied

        for name, value in (("max_new_tokens", max_new_tokens), ("num_return_sequences", num_return_sequences)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be an int >= 1, got {value!r}")
        if num_return_sequences > 1 and not do_sample:
            raise InputError(f"num_return_sequences={num_return_sequences} needs do_sample=True: greedy decoding "
                             "returns the same sequence every time")
        if do_sample and not temperature > 0:
            raise InputError(f"temperature must be > 0 for sampling, got {temperature!r}")
        if do_sample and not 0 < top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {top_p!r}")
        inputs = self._inputs(batch)
        if seed is not None:
            torch.manual_seed(seed)
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            "num_return_sequences": num_return_sequences,
            "return_dict_in_generate": True,
            "output_scores": True,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if do_sample:  # top_k=0: no hidden top-50 truncation (transformers' default); only what is asked
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        layout = batch.layout if isinstance(batch, Batch) else None
        call = Call(copies=num_return_sequences, order="sample", images_copied=False)
        with self._hooks.stack.entered(call), applied(self, interventions, layout), torch.no_grad():
            out = self.hf_model.generate(**inputs, **kwargs)
        prompt_len = inputs["input_ids"].shape[1]
        new = out.sequences[:, prompt_len:]
        logprobs = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)
        scores = logprobs.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        texts = tuple(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return Generation(texts=texts, token_ids=new.cpu(), scores=scores.cpu())

    # ---------------------------------------------------------------- checks
    def check_sites(self) -> None:
        """Run one dummy forward; confirm every site fires and computes what its name says.

        See :func:`vlmlens.checks.check_sites`.

        Raises:
            SiteCheckError: a site never fired, has a wrong shape, or breaks a residual identity.
        """
        from vlmlens.checks import check_sites

        check_sites(self)

    def __repr__(self) -> str:
        return (
            f"HookedVLM({self.adapter.architecture}, text layers={self.n_layers}, "
            f"vision layers={self.n_vision_layers}, d_model={self.d_model}, heads={self.n_heads})"
        )


def _text_model_type(config: Any) -> str | None:
    text = getattr(config, "text_config", None)
    return getattr(text, "model_type", None)
