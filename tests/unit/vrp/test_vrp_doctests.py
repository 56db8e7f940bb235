"""The examples in vlmlens.vrp docstrings run and print what they say."""

import doctest
import importlib
import inspect

import pytest

MODULES = [
    "vlmlens.vrp.attention",
    "vlmlens.vrp.calibration",
    "vlmlens.vrp.consistency",
    "vlmlens.vrp.logistic",
    "vlmlens.vrp.margins",
    "vlmlens.vrp.pooling",
    "vlmlens.vrp.probes",
    "vlmlens.vrp.splits",
    "vlmlens.vrp.stats.base",
    "vlmlens.vrp.stats.correlation",
    "vlmlens.vrp.stats.paired",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    # Parse docstrings by hand: doctest.testmod skips functions wrapped by the runtime
    # type checker, whose __globals__ are not the module's.
    module = importlib.import_module(name)
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    attempted = 0
    for attr, obj in vars(module).items():
        doc = inspect.getdoc(inspect.unwrap(obj)) if callable(obj) else None
        if not doc or getattr(obj, "__module__", None) != name:
            continue
        test = parser.get_doctest(doc, dict(vars(module)), f"{name}.{attr}", name, 0)
        result = runner.run(test)
        assert result.failed == 0, f"{name}.{attr}: docstring example failed"
        attempted += result.attempted
    assert attempted > 0
