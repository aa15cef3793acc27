"""Import boundaries of the LLM layer: `uhnas.llm` never loads torch, and only the client (imported by
`uhnas.search.llm_methods` alone) loads `openai`, so a conventional run never imports the SDK."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

LLM_MODULES = ("errors", "cache", "parse", "prompting", "propose", "knowledge")


def loaded_after(statement: str, prefixes: tuple[str, ...]) -> list[str]:
    """Modules whose name starts with one of `prefixes` that are loaded after `statement`, in a fresh interpreter."""
    code = f"import sys; {statement}; print(sorted(m for m in sys.modules if m.startswith({prefixes!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return list(ast.literal_eval(out.stdout.strip()))


@pytest.mark.parametrize("module", [f"uhnas.llm.{m}" for m in LLM_MODULES])
def test_the_llm_layer_loads_neither_openai_nor_torch(module: str) -> None:
    assert loaded_after(f"import {module}", ("openai", "torch")) == []


def test_the_client_loads_openai_but_not_torch() -> None:
    loaded = loaded_after("import uhnas.llm.client", ("openai", "torch"))
    assert "openai" in loaded and "torch" not in loaded


@pytest.mark.parametrize("module", ["uhnas.search.operators.llm", "uhnas.search.methods", "uhnas.search.engine"])
def test_the_search_side_loads_openai_only_through_the_llm_methods(module: str) -> None:
    assert loaded_after(f"import {module}", ("openai",)) == []


def test_the_llm_methods_load_openai() -> None:
    assert "openai" in loaded_after("import uhnas.search.llm_methods", ("openai",))
