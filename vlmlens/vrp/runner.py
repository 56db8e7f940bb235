"""``vlmlens.vrp.run``: every VRP measurement over (model, dataset), for notebooks and the CLI.

Examples:
    >>> import vlmlens.vrp as vrp
    >>> from vlmlens.testing import tiny_vlm
    >>> from vlmlens.data import synth_pope
    >>> config = vrp.VRPConfig(n_resamples=50, consistency=vrp.ConsistencyConfig(k=2, ks=(2,)))
    >>> result = vrp.run(tiny_vlm("llava"), synth_pope("adversarial", 1), config)  # doctest: +SKIP
    >>> result.summary().startswith("# VRP summary")  # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from vlmlens.data import pope_metrics
from vlmlens.errors import DataError
from vlmlens.ray_pool import ActorPool, RayConfig, import_ray, ray_session
from vlmlens.vrp.ablation import (
    ablation_result,
    destruction_result,
    make_plan,
    run_interventions,
)
from vlmlens.vrp.analysis import (
    attention_summary,
    calibration_summary,
    consistency_summary,
    examples,
    images,
    margin_summary,
    masking_summary,
    multiplicity,
    probe_summary,
    to_jsonable,
)
from vlmlens.vrp.batches import LocalBatches, RayBatches, as_batches
from vlmlens.vrp.config import VRPConfig
from vlmlens.vrp.identify import identification_result, run_identification
from vlmlens.vrp.pipeline import run_samples
from vlmlens.vrp.store import SampleStore

__all__ = ["VRPResult", "run", "run_ray"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, eq=False)
class VRPResult:
    """The VRP measurements of one model on one dataset.

    Attributes:
        name: The model's name in tables and figures.
        results: Every number, JSON-ready (the per-model entry of ``results.json``).
        samples: The per-sample table (one row per question).
        config: The settings used.
        folder: The per-sample store, or ``None`` when it was a temporary folder.
        dataset: The dataset (its images are drawn under the example attention maps).
    """

    name: str
    results: dict[str, Any] = field(repr=False)
    samples: pd.DataFrame = field(repr=False)
    config: VRPConfig = field(repr=False)
    folder: Path | None = None
    dataset: Any = field(default=None, repr=False)

    def summary(self) -> str:
        """The headline table (markdown) in the shape of the paper's, ours beside the paper's."""
        from vlmlens.vrp.headline import summary_markdown

        return summary_markdown({"config": self.config.to_dict(), "models": {self.name: self.results}})

    def figures(self) -> dict[str, Any]:
        """The report's plotly figures, by name."""
        from vlmlens.viz.figures import vrp_figures

        return vrp_figures({"models": {self.name: self.results}},
                           datasets={self.name: self.dataset} if self.dataset is not None else None)

    def to_frame(self) -> pd.DataFrame:
        """The per-sample table (a copy)."""
        return self.samples.copy()


ANALYSIS_ONLY = ("n_resamples", "n_examples", "interventions", "probe", "mlp_probe")
"""VRPConfig settings that change no stored table (the statistics are recomputed from the store)."""


def stored_settings(config: VRPConfig) -> dict[str, Any]:
    """The settings a store's tables depend on (``settings.json``): resuming under others is refused."""
    settings = {k: v for k, v in config.to_dict().items() if k not in ANALYSIS_ONLY}
    settings["identify"] = {"max_new_tokens": config.identify.max_new_tokens}  # enabling it adds a table, changes none
    return to_jsonable(settings)


def _check_settings(store: SampleStore, config: VRPConfig) -> None:
    current, stored = stored_settings(config), store.read_json("settings")
    if stored is not None and stored != current:
        changed = sorted(k for k in current.keys() | stored.keys() if current.get(k) != stored.get(k))
        raise DataError(f"{store.folder} was measured with other settings ({', '.join(changed)} differ from this "
                        "run's); use another --out, or delete the folder to start over.")
    store.write_json("settings", current)


def _measure(model: Any, dataset: Any, config: VRPConfig, store: SampleStore, *, name: str,
             resume: bool, progress: bool | None = None) -> tuple[dict[str, Any], pd.DataFrame]:
    """Run (or resume) both phases into ``store``: the JSON-ready results and the per-sample table.

    Raises:
        DataError: if the store exists and ``resume`` is false, or the store's plan was made
            with other settings.
    """
    _check_settings(store, config)
    model = as_batches(model)
    run_samples(model, dataset, config, store, resume=resume, name=name, progress=progress)
    qids = [item.question_id for item in dataset.items]
    frame = store.read("samples", qids)
    metrics = pope_metrics(frame["answer"].tolist(), frame["label"].tolist())
    probes = probe_summary(store, frame, config)
    margins = margin_summary(frame)
    out: dict[str, Any] = {
        "family": model.info.family, "n_layers": model.info.n_layers, "d_model": model.info.d_model, "n": len(frame),
        "pope": metrics.to_dict(), "first_token_accuracy": float(frame["first_correct"].mean()),
        "attention": to_jsonable(attention_summary(frame, config)),
        "margins": to_jsonable(margins), "probes": probes.to_dict(),
        "consistency": to_jsonable(consistency_summary(frame, config)),
        "calibration": to_jsonable(calibration_summary(frame, probes, config)),
        "masking": to_jsonable(masking_summary(frame, config)),
    }
    phase2, table = _interventions(model, dataset, config, store, frame, name=name, progress=progress,
                                   best_probe=probes.best_layer(), peak_visual=margins.peak_visual_layer)
    out.update(phase2)
    out["multiplicity"] = multiplicity(out)
    out["examples"] = examples(frame, config.n_examples)
    if table is not None:
        frame = frame.merge(table.drop(columns=["batch"]), on="question_id")
    return out, frame


def _interventions(model: LocalBatches | RayBatches, dataset: Any, config: VRPConfig, store: SampleStore,
                   frame: pd.DataFrame, *,
                   name: str, best_probe: int | None, peak_visual: int,
                   progress: bool | None = None) -> tuple[dict[str, Any], pd.DataFrame | None]:
    phases = ("ablation", "destruction", *(("identification",) if config.identify.enabled else ()))
    if not config.interventions:
        return dict.fromkeys(phases, "skipped: VRPConfig.interventions is False"), None
    correct = frame["correct"].to_numpy()
    if best_probe is None or correct.min() == correct.max():
        why = (f"undefined: needs both correct and wrong greedy answers with enough of each for the probes "
               f"(got {int(correct.sum())} correct of {len(correct)})")
        return dict.fromkeys(phases, why), None
    plan = make_plan(store, frame, config, best_probe=best_probe, peak_visual=peak_visual, n_layers=model.info.n_layers)
    stored = store.read_json("plan")
    if stored is not None and stored != to_jsonable(plan) and store.exists("interventions"):
        raise DataError(f"{store.folder / 'plan.json'} was made with other settings or data than this run; "
                        "use another --out, or delete the folder to start over.")
    store.write_json("plan", to_jsonable(plan))
    run_interventions(model, dataset, config, store, plan, name=name, progress=progress)
    table = store.read("interventions", frame["question_id"].tolist())
    first = frame["first_correct"].to_numpy()
    kw = {"groups": images(frame), "n_resamples": config.n_resamples, "seed": config.seed}
    destruction = destruction_result(first, table, plan, mode=config.destruction.mode, **kw)
    ranked, random = destruction.drop_at(0.5)
    extra: dict[str, Any] = {}
    if config.identify.enabled:
        run_identification(model, dataset, config, store, plan, name=name, progress=progress)
        identified = store.read("identify", frame["question_id"].tolist())
        extra["identification"] = {"layer": plan["ablation_layer"],
                                   **identification_result(identified, plan, config, groups=kw["groups"])}
        scores = [c for c in identified.columns if c.endswith("_correct")]  # answers stay in identify.csv
        table = table.merge(identified[["question_id", *scores]], on="question_id")
    return {
        "ablation": {
            "layer": plan["ablation_layer"],
            **{point: to_jsonable(ablation_result(first, table, plan, f"ablate_{point}", config.ablation, **kw))
               for point in ("mlp_out", "mlp_post")},
        },
        "destruction": {"layer": plan["destruction_layer"], **to_jsonable(destruction),
                        "fractions": list(destruction.fractions), "drop_at_half_pp": {"ranked": ranked,
                                                                                       "random": random}},
        **extra,
    }, table


def run(model: Any, dataset: Any, config: VRPConfig | None = None, *, out: Path | str | None = None,
        name: str | None = None, resume: bool = False, progress: bool | None = None) -> VRPResult:
    """Every VRP measurement of ``model`` on ``dataset``.

    Args:
        model: A HookedVLM (or a :class:`~vlmlens.vrp.batches.RayBatches`; :func:`run_ray` builds one).
        dataset: A :class:`vlmlens.data.PopeDataset` (e.g. ``synth_pope("adversarial", 100)``).
        config: Settings (default ``VRPConfig()``).
        out: Folder for the per-sample store; ``None`` uses a temporary folder, deleted after.
        name: The model's name in tables (default: its family).
        resume: Continue the store in ``out``.
        progress: progress bars per pass (``None``: for passes of at least 8 batches; see
            :mod:`vlmlens.progress`).

    Returns:
        A :class:`VRPResult`.

    Raises:
        DataError: on an empty dataset, or an existing store without ``resume``.
    """
    config = VRPConfig() if config is None else config
    model = as_batches(model)
    return _in_store(model, dataset, config, out, name or model.info.family, resume, progress)


def run_ray(model_factory: Callable[[], Any], dataset: Any, config: VRPConfig | None = None, *,
            out: Path | str | None = None, name: str | None = None, resume: bool = False,
            progress: bool | None = None, ray: RayConfig | None = None) -> VRPResult:
    """:func:`run` with the per-batch passes spread over Ray actors, one model replica each.

    The actors take the batches of each pass (per-sample measurements, ablations,
    identification) as they become free; each batch's feature shard is written by its
    actor, its rows by this process as it arrives, so the store, and every number computed
    from it, is the one :func:`run` writes. An actor that dies is replaced and its batch run
    again; a killed call resumes with ``resume=True`` from the finished batches. The analysis
    between and after the passes runs here, without a model.

    Args:
        model_factory: Builds the HookedVLM inside each actor (picklable, no arguments, e.g.
            ``functools.partial(HookedVLM.from_pretrained, "toy-llava")``).
        dataset: As for :func:`run`; pickled to the actors once per pass.
        config, out, name, resume, progress: As for :func:`run` (``name`` defaults to the family).
        ray: Actors and their resources (:class:`~vlmlens.ray_pool.RayConfig`; default 2 CPU actors).

    Returns:
        A :class:`VRPResult`.

    Raises:
        InputError: if Ray is not installed, or an actor asks for more than the cluster has.
        DataError: as for :func:`run`, or if a batch's actor died more than ``max_restarts`` times.
    """
    config = VRPConfig() if config is None else config
    ray_config = ray or RayConfig()
    module = import_ray("vlmlens.vrp.run_ray")
    with (ray_session(module, ray_config.workers, ray_config) as actors,
          ActorPool(module, model_factory, ray_config, size=actors) as pool):
        model = RayBatches(pool)
        return _in_store(model, dataset, config, out, name or model.info.family, resume, progress)


def _in_store(model: Any, dataset: Any, config: VRPConfig, out: Path | str | None, name: str, resume: bool,
              progress: bool | None) -> VRPResult:
    """Run into ``out``, or into a temporary folder deleted after (then the result has no folder)."""
    if out is None:
        with tempfile.TemporaryDirectory(prefix="vrp-") as tmp:
            return replace(_in_store(model, dataset, config, tmp, name, resume, progress), folder=None)
    store = SampleStore(Path(out))
    results, samples = _measure(model, dataset, config, store, name=name, resume=resume, progress=progress)
    return VRPResult(name=name, results=results, samples=samples, config=config, folder=store.folder,
                     dataset=dataset)
