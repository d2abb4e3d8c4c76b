"""Every public function and class of the package shows an example of its use."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import workbench


def _public_modules():
    for info in pkgutil.walk_packages(workbench.__path__, "workbench."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            yield importlib.import_module(info.name)


def _has_example(obj, module) -> bool:
    """A ``>>>`` line in its own docstring, or one in its module's docstring that uses it."""
    if ">>>" in (inspect.getdoc(obj) or ""):
        return True
    module_lines = (module.__doc__ or "").splitlines()
    used = re.compile(rf"\b{re.escape(obj.__name__)}\b")
    return any(">>>" in line and used.search(line) for line in module_lines)


def _public_objects(module):
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name)
        defined_here = getattr(obj, "__module__", None) == module.__name__
        callable_api = inspect.isfunction(obj) or inspect.isclass(obj)
        # Errors and warnings are shown where they are raised, in their callers' examples.
        raised = inspect.isclass(obj) and issubclass(obj, (BaseException, Warning))
        if defined_here and callable_api and not raised:
            yield name, obj


def test_every_public_function_and_class_has_an_example():
    missing = [
        f"{module.__name__}.{name}"
        for module in _public_modules()
        for name, obj in _public_objects(module)
        if not _has_example(obj, module)
    ]
    assert missing == []


def test_the_check_sees_a_missing_example():
    from workbench.train import checkpoint

    assert dict(_public_objects(checkpoint))["rng_state"] is checkpoint.rng_state
    assert _has_example(checkpoint.rng_state, checkpoint)
    assert not _has_example(test_the_check_sees_a_missing_example, checkpoint)
