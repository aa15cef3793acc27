"""Methods are found through the `uhnas.methods` entry points, loaded lazily, and a broken plugin is named."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from uhnas.config import RunConfig
from uhnas.errors import MethodError
from uhnas.search import conventional, methods
from uhnas.search.methods import (
    ENTRY_POINT_GROUP,
    MethodSetup,
    installed_methods,
    load_factory,
    make_method,
    method_names,
    register_method,
    unregister_method,
)

BUILT_INS = {
    "nsga2": "uhnas.search.conventional:make_nsga2",
    "random": "uhnas.search.conventional:make_random",
    "regevo": "uhnas.search.conventional:make_regevo",
    "optuna-nsga2": "uhnas.search.optuna_methods:make_optuna_nsga2",
    "optuna-tpe": "uhnas.search.optuna_methods:make_optuna_tpe",
    "uhnas": "uhnas.search.llm_methods:make_uhnas",
    "llmatic": "uhnas.search.llm_methods:make_llmatic",
    "genius": "uhnas.search.llm_methods:make_genius",
}
SETUP = MethodSetup(RunConfig(), (1, 8, 8), 10, (1.0, 5.0))


@pytest.fixture
def registered() -> Iterator[list[str]]:
    """Names registered by a test, removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        unregister_method(name)


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The installed entry points plus a third-party one whose package is not installed."""
    real = methods.entry_points(group=ENTRY_POINT_GROUP)
    extra = EntryPoint(name="thirdparty", value="thirdparty_nas_absent.methods:make", group=ENTRY_POINT_GROUP)
    monkeypatch.setattr(methods, "entry_points", lambda group: [*real, extra] if group == ENTRY_POINT_GROUP else [])
    installed_methods.cache_clear()
    yield
    monkeypatch.undo()
    installed_methods.cache_clear()


def test_the_eight_built_ins_are_installed_entry_points() -> None:
    assert BUILT_INS.items() <= dict(installed_methods()).items()
    assert set(BUILT_INS) <= set(method_names())
    for name in ("nsga2", "random", "regevo", "optuna-nsga2", "optuna-tpe"):
        module, factory = BUILT_INS[name].split(":")
        assert load_factory(name) is getattr(importlib.import_module(module), factory)


def test_make_method_builds_each_conventional_method() -> None:
    expected = {
        "nsga2": "NSGA2",
        "random": "RandomSearch",
        "regevo": "RegularizedEvolution",
        "optuna-nsga2": "OptunaMethod",
        "optuna-tpe": "OptunaMethod",
    }
    assert {name: type(make_method(name, SETUP)).__name__ for name in expected} == expected


def test_unknown_method_lists_the_installed_ones() -> None:
    with pytest.raises(MethodError) as caught:
        make_method("nsga3", SETUP)
    message = str(caught.value)
    assert "\n" not in message and "unknown method 'nsga3'" in message
    assert all(name in message for name in BUILT_INS)


def test_a_broken_entry_point_is_named_with_its_import_error(plugin: None) -> None:
    assert "thirdparty" in method_names()
    with pytest.raises(MethodError) as caught:
        make_method("thirdparty", SETUP)
    message = str(caught.value)
    assert "\n" not in message
    assert "'thirdparty'" in message and "thirdparty_nas_absent.methods:make" in message
    assert "ModuleNotFoundError: No module named 'thirdparty_nas_absent'" in message
    make_method("nsga2", SETUP)  # the others stay usable


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("uhnas_no_such_module:make", "ModuleNotFoundError"),
        ("uhnas.search.methods:make_nothing", "AttributeError"),
        ("uhnas.search.space:WIDTHS", "not a factory"),
    ],
)
def test_a_broken_registration_is_a_one_line_method_error(registered: list[str], path: str, error: str) -> None:
    registered.append("broken-test")
    register_method("broken-test", path)
    with pytest.raises(MethodError) as caught:
        make_method("broken-test", SETUP)
    message = str(caught.value)
    assert "\n" not in message and "'broken-test'" in message and path in message and error in message


def test_a_plugin_that_crashes_on_import_keeps_its_traceback(
    registered: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "uhnas_crashing_plugin.py").write_text("raise RuntimeError('bug in the plugin')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registered.append("crashing-test")
    register_method("crashing-test", "uhnas_crashing_plugin:make")
    with pytest.raises(RuntimeError, match="bug in the plugin") as caught:
        make_method("crashing-test", SETUP)
    assert any("crashing-test" in note for note in getattr(caught.value, "__notes__", []))


def test_register_method_adds_in_process_and_removal_restores(registered: list[str]) -> None:
    registered.append("nsga2-alias-test")
    register_method("nsga2-alias-test", conventional.make_nsga2)
    assert "nsga2-alias-test" in method_names()
    assert type(make_method("nsga2-alias-test", SETUP)).__name__ == "NSGA2"
    unregister_method("nsga2-alias-test")
    assert "nsga2-alias-test" not in method_names()
    unregister_method("nsga2")  # installed methods leave with their package, not here
    assert "nsga2" in method_names()


def test_a_conventional_method_never_imports_the_llm_stack() -> None:
    code = textwrap.dedent(
        """
        import sys
        from uhnas.config import RunConfig
        from uhnas.search.methods import MethodSetup, make_method, method_names

        assert "uhnas" in method_names()
        for name in ("nsga2", "random", "regevo", "optuna-nsga2", "optuna-tpe"):
            make_method(name, MethodSetup(RunConfig(), (1, 8, 8), 10, (1.0, 5.0)))
        loaded = sorted(m for m in ("openai", "uhnas.search.llm_methods", "uhnas.llm.client") if m in sys.modules)
        print(",".join(loaded) or "none")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "none"
