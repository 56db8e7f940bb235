"""Runtime shape and type checking (jaxtyping + beartype) for the vlmlens.vrp tests.

The import hook only instruments modules imported after it is installed, so vlmlens.vrp
is imported here, before any test module imports it. beartype must itself be imported
before nnsight (pulled in by ``import vlmlens``): nnsight mounts an unhashable ``save``
method on ``object``, which breaks beartype's import.
"""

import sys
import warnings

from jaxtyping import install_import_hook

try:
    import beartype  # noqa: F401
except TypeError as exc:  # nnsight was imported first, by an earlier test module
    warnings.warn(
        f"vlmlens.vrp tests run without runtime shape checking: beartype failed to import "
        f"after nnsight ({exc}); import beartype in tests/conftest.py to enable it.",
        stacklevel=1,
    )
else:
    if not any(name.startswith("vlmlens.vrp") for name in sys.modules):
        # PEP 484's numeric tower: an int is accepted where a float is annotated.
        checker = "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))"
        with install_import_hook("vlmlens.vrp", checker):
            import vlmlens.vrp  # noqa: F401
