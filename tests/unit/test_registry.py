"""The generic Registry: duplicates refused, misses list names, lazy imports; import_object errors."""

from __future__ import annotations

import collections
import sys

import pytest

from kdforge.core.errors import RegistryError
from kdforge.core.registry import Registry, import_object


def _registry() -> Registry:
    things: Registry = Registry("widget")
    things.register("alpha", 1)
    things.register("beta", 2)
    return things


def test_register_and_get() -> None:
    things = _registry()
    assert things.get("alpha") == 1
    assert things.get("beta") == 2
    assert things.names() == ["alpha", "beta"]
    assert list(things) == ["alpha", "beta"]
    assert "alpha" in things
    assert "gamma" not in things


def test_register_as_decorator_returns_the_target() -> None:
    things: Registry = Registry("widget")

    @things.register("fn")
    def fn() -> str:
        return "ran"

    assert fn() == "ran"
    assert things.get("fn") is fn


def test_duplicate_name_is_refused() -> None:
    things = _registry()
    with pytest.raises(RegistryError, match="widget 'alpha' is registered twice"):
        things.register("alpha", 3)
    assert things.get("alpha") == 1  # the first entry is kept


def test_duplicate_via_decorator_is_refused() -> None:
    things = _registry()
    with pytest.raises(RegistryError, match="registered twice"):
        things.register("beta")(lambda: None)


def test_duplicate_lazy_entry_is_refused() -> None:
    things = _registry()
    with pytest.raises(RegistryError, match="registered twice"):
        things.register("alpha", "collections:OrderedDict")


def test_unknown_name_lists_available_and_close_match() -> None:
    things = _registry()
    things.register("gamma_ray", 3)
    with pytest.raises(RegistryError) as info:
        things.get("alpah")
    message = str(info.value)
    assert "unknown widget 'alpah'" in message
    assert "Did you mean 'alpha'" in message
    assert "Available: alpha, beta, gamma_ray, or an import path package.module:Name." in message


def test_unknown_name_without_close_match_still_lists_names() -> None:
    with pytest.raises(RegistryError) as info:
        _registry().get("zzzzzz")
    message = str(info.value)
    assert "Did you mean" not in message
    assert "Available: alpha, beta, or an import path" in message


def test_registry_error_message_is_not_quoted() -> None:
    # RegistryError subclasses KeyError, whose str() would wrap the message in quotes.
    error = RegistryError("plain message")
    assert str(error) == "plain message"
    assert isinstance(error, KeyError)


def test_lazy_entry_imports_on_first_get(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stdlib module that nothing in the test run has imported yet stands in for an optional dependency.
    module = "xml.dom.minidom"
    monkeypatch.delitem(sys.modules, module, raising=False)
    things: Registry = Registry("parser")
    things.register("minidom", f"{module}:parseString")
    assert module not in sys.modules  # registering does not import
    assert "minidom" in things
    parse = things.get("minidom")
    assert module in sys.modules
    assert parse is sys.modules[module].parseString
    assert parse("<a/>").documentElement.tagName == "a"
    assert things.get("minidom") is parse  # cached after the first get


def test_lazy_entry_with_missing_module_says_what_to_install() -> None:
    things: Registry = Registry("model source")
    things.register("yolo", "kdforge_no_such_module_xyz:build")
    with pytest.raises(RegistryError) as info:
        things.get("yolo")
    message = str(info.value)
    assert "model source 'yolo'" in message
    assert "kdforge_no_such_module_xyz" in message
    assert "pip install" in message


def test_lazy_entry_with_missing_attribute_is_a_registry_error() -> None:
    things: Registry = Registry("widget")
    things.register("broken", "collections:NoSuchThing")
    with pytest.raises(RegistryError, match="NoSuchThing"):
        things.get("broken")


def test_import_object_walks_attributes() -> None:
    assert import_object("collections:OrderedDict") is collections.OrderedDict
    assert import_object("collections:OrderedDict.fromkeys") == collections.OrderedDict.fromkeys
    assert import_object("kdforge.core.registry:Registry") is Registry


@pytest.mark.parametrize("path", ["collections", "collections:", ":OrderedDict", ""])
def test_import_object_needs_module_colon_attribute(path: str) -> None:
    with pytest.raises(RegistryError, match="must look like 'package.module:attribute'"):
        import_object(path, "model factory")


def test_import_object_missing_module() -> None:
    with pytest.raises(RegistryError, match="cannot import module 'kdforge_no_such_module_xyz' for model factory"):
        import_object("kdforge_no_such_module_xyz:build", "model factory")


def test_import_object_missing_attribute_suggests_close_name() -> None:
    with pytest.raises(RegistryError) as info:
        import_object("collections:OrderedDcit")
    message = str(info.value)
    assert "has no attribute 'OrderedDcit'" in message
    assert "Did you mean 'OrderedDict'" in message


def test_import_object_missing_nested_attribute() -> None:
    with pytest.raises(RegistryError, match="has no attribute 'nope'"):
        import_object("collections:OrderedDict.nope")


def test_an_import_path_name_gives_the_object_it_points_to() -> None:
    things = _registry()
    assert things.get("collections:OrderedDict") is collections.OrderedDict
    with pytest.raises(RegistryError, match=r"no attribute 'OrderdDict'.*Did you mean 'OrderedDict'"):
        things.get("collections:OrderdDict")
    with pytest.raises(RegistryError, match="cannot import module 'no_such_pkg.mod'"):
        things.get("no_such_pkg.mod:Thing")
