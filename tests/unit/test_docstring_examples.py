"""Every ``>>>`` example in a vlmlens docstring runs and prints what it says.

Examples in modules, classes, functions, methods and properties are collected by hand:
``doctest.testmod`` skips callables wrapped by the runtime type checker. Examples that
continue a session (``model``, ``batch``, ``cache`` ...) run in a namespace that holds a
tiny random LLaVA and its inputs, named as the docs use them.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

import vlmlens

PACKAGE = Path(vlmlens.__file__).parent
MODULES = sorted(
    ".".join(("vlmlens", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
    for path in PACKAGE.rglob("*.py")
    if ">>>" in path.read_text()
)


class ToySAE(nn.Module):
    """A dictionary of 32 features over a width, for the SAE examples."""

    def __init__(self, width: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.W_enc = nn.Parameter(torch.randn(width, 32, generator=generator) / width**0.5)
        self.W_dec = nn.Parameter(torch.randn(32, width, generator=generator) / 32**0.5)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec


@pytest.fixture(scope="module")
def session() -> dict[str, object]:
    from vlmlens.ops import logit_diff
    from vlmlens.testing import tiny_images, tiny_vlm

    model = tiny_vlm("llava")
    questions = ["Is there a cat in the image?", "Is there a dog?"]
    batch = model.prepare(tiny_images(2), questions)
    _, cache = model.run_with_cache(batch)
    return {
        "model": model,
        "batch": batch,
        "clean": batch,
        "corrupt": model.prepare(tiny_images(2, seed=2), questions),
        "metric": logit_diff(5, 7),
        "cache": cache,
        "v": torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)),
        "sae": ToySAE(model.d_model),
    }


def docstrings(module: object) -> dict[str, str]:
    """The docstrings of a module and of what it defines (classes' members included)."""
    name = module.__name__
    found = {name: module.__doc__}
    for attr, obj in vars(module).items():
        obj = inspect.unwrap(obj) if callable(obj) else obj
        if getattr(obj, "__module__", None) != name or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        found[f"{name}.{attr}"] = inspect.getdoc(obj)
        if inspect.isclass(obj):
            for member, value in vars(obj).items():
                target = value.fget if isinstance(value, property) else value
                target = target.__func__ if isinstance(target, (staticmethod, classmethod)) else target
                if inspect.isfunction(inspect.unwrap(target)) or isinstance(value, property):
                    found[f"{name}.{attr}.{member}"] = inspect.getdoc(inspect.unwrap(target))
    return {where: doc for where, doc in found.items() if doc and ">>>" in doc}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str, session, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # examples that write files write here
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    found = docstrings(module)
    assert found, f"{name} has '>>>' in its source but no docstring example was collected"
    for where, doc in found.items():
        test = parser.get_doctest(doc, {**vars(module), **session}, where, name, 0)
        result = runner.run(test)
        assert result.failed == 0, f"{where}: docstring example failed"
