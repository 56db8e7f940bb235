"""vlmlens.circuits: localise the units behind a behaviour and test them causally.

* :class:`Behaviour` — yes/no questions about images, split by image.
* :func:`localize` — rank neurons, MLP-output dims, residual dims or heads by a sparse
  probe (L1 path to exactly k units), direct logit attribution, attribution patching or
  exact ablation; a frozen :class:`Localization`.
* :func:`ablation_curve` — ablate the top k on held-out images against matched random
  units; exact McNemar, permutation p-values and CIs by image.
* :func:`concentration` — how few units carry it (score share, depth profile, the k that
  breaks it) and a stated verdict.
* :func:`plant_bottleneck` / :func:`plant_distributed` — positive and negative controls.

Examples:
    >>> from vlmlens.testing import tiny_vlm
    >>> from vlmlens.data import synth_pope
    >>> model = tiny_vlm("llava")
    >>> rank, held_out = Behaviour.from_dataset(synth_pope("adversarial", n_images=4, seed=0)).split()
    >>> found = localize(model, rank, kind="head", method="atp", k=2)
    >>> found.kind, len(found.chosen)
    ('head', 2)
"""

from vlmlens.circuits.behaviour import AnswerIds, Behaviour
from vlmlens.circuits.controls import plant_bottleneck, plant_distributed, self_labelled
from vlmlens.circuits.localization import METHODS, Localization, localize
from vlmlens.circuits.probe import L1Path, l1_path
from vlmlens.circuits.summary import Concentration, concentration
from vlmlens.circuits.units import KINDS
from vlmlens.circuits.validate import (
           AblationCurve,
           AblationPoint,
           ablation_curve,
           matched_random,
)

__all__ = ["KINDS", "METHODS", "AblationCurve", "AblationPoint", "AnswerIds", "Behaviour", "Concentration", "L1Path",
           "Localization", "ablation_curve", "concentration", "l1_path", "localize", "matched_random",
           "plant_bottleneck", "plant_distributed", "self_labelled"]
