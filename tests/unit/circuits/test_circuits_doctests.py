"""The examples in vlmlens.circuits docstrings (modules and their functions) run and print what they say."""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

MODULES = ["vlmlens.circuits", "vlmlens.circuits.behaviour", "vlmlens.circuits.cli", "vlmlens.circuits.controls",
           "vlmlens.circuits.fusion", "vlmlens.circuits.localization", "vlmlens.circuits.seeds",
           "vlmlens.circuits.validate"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    # Parse docstrings by hand: doctest.testmod skips functions wrapped by the runtime type checker.
    module = importlib.import_module(name)
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    docs = {name: module.__doc__} | {
        f"{name}.{attr}": inspect.getdoc(inspect.unwrap(obj)) for attr, obj in vars(module).items()
        if callable(obj) and getattr(obj, "__module__", None) == name}
    attempted = 0
    for where, doc in docs.items():
        if doc:
            result = runner.run(parser.get_doctest(doc, dict(vars(module)), where, name, 0))
            assert result.failed == 0, f"{where}: docstring example failed"
            attempted += result.attempted
    assert attempted > 0
