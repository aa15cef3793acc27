"""The `uhnas` command: architecture tools, single evaluations, backends, searches and their results.

Every command prints a readable table by default and one JSON document with `--json`. Errors in the
user's input (files, flags, configs, architectures: `uhnas.errors.UhnasError`) end with a one-line
`error: ...` on stderr and exit code 2 (UHNAS_DEBUG=1 shows their traceback too); any other exception is a
bug and prints its traceback and exits 1.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from uhnas import __version__
from uhnas.allocator import keep_freed_memory
from uhnas.errors import UhnasError
from uhnas.search.methods import method_names

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # usage errors as click's plain "Error: ..." line, not a box
    help="uhnas: LLM-guided, hardware-aware neural architecture search.",
)
arch_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="The architecture IR: schema and checks.")
app.add_typer(arch_app, name="arch")


@app.callback()
def _process_setup() -> None:
    """Before any command: keep freed memory in the heap (simulations reuse tensors of tens of MB; uhnas.allocator)."""
    keep_freed_memory()


console = Console()
EXIT_USAGE = 2


class CLIError(UhnasError):
    """A wrong combination of flags or a missing run directory: printed as one line, exit code 2."""


@contextmanager
def cli_errors() -> Iterator[None]:
    """A user-fixable error (UhnasError) becomes `error: <one line>` and exit 2; anything else is a bug.

    A bug keeps its traceback (printed by Python) after a one-line hint, and exits 1.
    """
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        typer.echo("\ninterrupted", err=True)
        raise typer.Exit(130) from None
    except UhnasError as error:
        if os.environ.get("UHNAS_DEBUG"):
            raise
        text = str(error).strip()
        typer.echo(f"error: {text.splitlines()[0] if text else type(error).__name__}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except Exception:
        traceback.print_exc()
        typer.echo(
            f"internal error: this is a bug in uhnas {__version__}; please report it with the traceback above", err=True
        )
        raise typer.Exit(1) from None


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _fmt_int(value: int) -> str:
    return f"{value:,}"


def _load_checked(path: Path, dataset: str) -> tuple[Any, Any]:
    """Load an architecture file and check it against the dataset's shapes; errors name the file."""
    from uhnas.arch import ArchitectureError, analyze, load_architecture
    from uhnas.data import dataset_spec

    arch = load_architecture(path)
    shape = dataset_spec(dataset)
    try:
        return arch, analyze(arch, *shape)
    except ArchitectureError as error:
        raise ArchitectureError(f"{path}: {error}") from None


# --------------------------------------------------------------------------------------- arch
@arch_app.command("schema")
def arch_schema() -> None:
    """Print the JSON schema of an architecture (usable as an LLM structured-output schema)."""
    with cli_errors():
        from uhnas.arch import architecture_schema

        _print_json(architecture_schema())


@arch_app.command("check")
def arch_check(
    path: Annotated[Path, typer.Argument(help="Architecture JSON file.")],
    dataset: Annotated[
        str, typer.Option(help="digits, mnist or fashion-mnist (sets input shape and classes).")
    ] = "digits",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Validate an architecture and print each layer's output shape, parameters and MACs."""
    with cli_errors():
        from uhnas.arch import arch_hash

        arch, summary = _load_checked(path, dataset)
        input_shape = summary.input_shape
        if as_json:
            _print_json(
                {
                    "arch_hash": arch_hash(arch),
                    "dataset": dataset,
                    "input_shape": list(input_shape),
                    "layers": [
                        {
                            "index": i.index,
                            "type": i.type,
                            "out_shape": list(i.out_shape),
                            "params": i.params,
                            "macs": i.macs,
                        }
                        for i in summary.layers
                    ],
                    "params": summary.params,
                    "macs": summary.macs,
                }
            )
            return
        table = Table(title=f"{arch.name or path.name} on {dataset} (input {'x'.join(map(str, input_shape))})")
        for column in ("#", "layer", "output", "params", "MACs"):
            table.add_column(column, justify="right" if column in ("#", "params", "MACs") else "left")
        for info, layer in zip(summary.layers, arch.layers):
            detail = ", ".join(f"{k}={v}" for k, v in layer.model_dump().items() if k != "type")
            table.add_row(
                str(info.index),
                f"{info.type}({detail})",
                "x".join(map(str, info.out_shape)),
                _fmt_int(info.params),
                _fmt_int(info.macs),
            )
        table.add_row(
            "",
            "[bold]total[/bold]",
            "",
            f"[bold]{_fmt_int(summary.params)}[/bold]",
            f"[bold]{_fmt_int(summary.macs)}[/bold]",
        )
        console.print(table)
        console.print(f"valid; hash {arch_hash(arch)}")


# --------------------------------------------------------------------------------------- evaluate
def _evaluation_table(data: dict[str, Any]) -> Table:
    table = Table(title=f"{data['arch_hash']} on {data['dataset']} / {data['backend']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows: list[tuple[str, str]] = [
        ("parameters", _fmt_int(data["params"])),
        ("MACs per inference", _fmt_int(data["macs"])),
        ("validation accuracy (clean)", f"{data['accuracy']:.4f}"),
        ("test accuracy (clean)", f"{data['test_accuracy']:.4f}"),
    ]
    noisy = data.get("noisy_accuracy")
    if noisy:
        rows.append(
            (
                f"validation accuracy under noise ({noisy['draws']} draws)",
                f"{noisy['mean']:.4f} ± {noisy['std']:.4f} (p5 {noisy['p5']:.4f})",
            )
        )
    if data.get("noisy_test_accuracy") is not None:
        rows.append(("test accuracy under noise (mean)", f"{data['noisy_test_accuracy']:.4f}"))
    rows.append(("energy per inference", f"{data['energy_nj']:.4g} nJ"))
    for component, value in data["energy_breakdown_nj"].items():
        share = value / data["energy_nj"] if data["energy_nj"] else 0.0
        rows.append((f"  {component}", f"{value:.4g} nJ ({share:.0%})"))
    if data.get("latency_ns") is not None:
        rows.append(("latency per inference", f"{data['latency_ns']:.4g} ns"))
    rows.append(("feasible", "yes" if data["feasible"] else "no"))
    for violation in data["violations"]:
        rows.append(
            (
                f"  violates {violation['constraint']}",
                f"{violation['actual']:.4g} > {violation['limit']:.4g} {violation['unit']}",
            )
        )
    rows.append(("training time", f"{data['train_seconds']:.2f} s ({data['epochs']} epochs)"))
    if data.get("mc_seconds"):
        rows.append(("noise evaluation time", f"{data['mc_seconds']:.2f} s"))
    if data.get("failed"):
        rows.append(("[red]failed[/red]", str(data.get("reason"))))
    for name, value in rows:
        table.add_row(name, value)
    return table


@app.command()
def evaluate(
    path: Annotated[Path, typer.Argument(help="Architecture JSON file.")],
    dataset: Annotated[str, typer.Option(help="digits, mnist or fashion-mnist.")] = "digits",
    backend: Annotated[str, typer.Option(help="Backend preset name or YAML file (see `uhnas backends`).")] = "ideal",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a backend constant: key=value (repeatable).")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 20,
    batch_size: Annotated[int, typer.Option(min=1, help="Training batch size.")] = 64,
    lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate.")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="Adam weight decay.")] = 0.0,
    seed: Annotated[int, typer.Option(min=0, help="Seed for initial weights, batches and noise draws.")] = 0,
    mc: Annotated[int, typer.Option(min=0, help="Monte-Carlo draws of the device's non-idealities.")] = 32,
    noise_aware: Annotated[bool, typer.Option(help="Sample the backend's non-idealities while training.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    data_dir: Annotated[Path | None, typer.Option(help="Directory holding MNIST-style IDX files.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Train one architecture and score it: accuracy clean and under device noise, energy, constraints."""
    with cli_errors():
        from uhnas.evaluate import evaluate as run_evaluation
        from uhnas.hardware.registry import load_backend
        from uhnas.train import TrainConfig

        arch, _ = _load_checked(path, dataset)  # impossible shapes: a one-line error before any work
        hw = load_backend(backend, set_ or [])
        config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed)
        result = run_evaluation(
            arch,
            dataset,
            hw,
            train_config=config,
            mc=mc,
            noise_aware=noise_aware,
            device=device,
            data_dir=str(data_dir) if data_dir else None,
        )
        data = result.to_dict()
        if as_json:
            _print_json(data)
        else:
            console.print(_evaluation_table(data))
        if result.failed:
            raise typer.Exit(1)


# --------------------------------------------------------------------------------------- backends
@app.command()
def backends(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List the installed hardware backends with their cards."""
    with cli_errors():
        from uhnas.hardware.registry import available_backends, broken_families, load_backend

        cards = [load_backend(name).describe().to_dict() for name in available_backends()]
        broken = broken_families()
        if as_json:
            _print_json({"backends": cards, "broken": broken})
            return
        for card in cards:
            table = Table(
                title=f"{card['name']}  [dim]({card['family']}, {card['precision']})[/dim]", title_justify="left"
            )
            table.add_column("constant")
            table.add_column("value", justify="right")
            table.add_column("unit")
            table.add_column("source", overflow="fold")
            for key, constant in card["constants"].items():
                table.add_row(key, str(constant["value"]), constant["unit"], constant["source"])
            console.print(card["description"])
            console.print(table)
        for name, reason in broken.items():
            # the reason quotes the entry point ("module:attr") and the error: shown verbatim, neither markup nor emoji
            console.print(
                f"[red]backend plugin {escape(repr(name))} failed to load:[/red] {escape(reason)}", emoji=False
            )


# --------------------------------------------------------------------------------------- search
def _search_overrides(**flags: Any) -> list[str]:
    """CLI flags -> config overrides (key.path=value); flags left unset change nothing."""
    paths = {
        "method": "method",
        "dataset": "dataset",
        "data_dir": "data_dir",
        "backend": "backend",
        "seed": "seed",
        "population": "population",
        "generations": "generations",
        "offspring": "offspring",
        "objective": "objective",
        "mc": "mc",
        "device": "device",
        "epochs": "training.epochs",
        "noise_aware": "training.noise_aware",
        "workers": "executor.workers",
        "timeout": "executor.timeout_s",
        "executor": "executor.kind",
        "ray_address": "executor.ray_address",
        "llm": "llm.provider",
        "model": "llm.model",
        "base_url": "llm.base_url",
        "api_key_env": "llm.api_key_env",
        "llm_budget_tokens": "llm.budget_tokens",
        "llm_budget_usd": "llm.budget_usd",
        "system_prompt": "llm.system_prompt",
        "temperature": "llm.temperature",
        "llm_timeout": "llm.timeout_s",
        "llm_max_tokens": "llm.max_tokens",
    }
    overrides = [
        f"{paths[name]}={json.dumps(value) if isinstance(value, str) else value}"
        for name, value in flags.items()
        if value is not None and name in paths
    ]
    if flags.get("backend_set"):
        overrides.append(f"backend_overrides={json.dumps(list(flags['backend_set']))}")
    return [o.replace("=True", "=true").replace("=False", "=false") for o in overrides]


def _front_rows(records: list[Any]) -> list[dict[str, Any]]:
    """Front members as JSON-ready rows, cheapest first."""
    from uhnas.llm.prompting import compact_layers

    rows = []
    for r in sorted(records, key=lambda r: r.energy_nj):
        rows.append(
            {
                "trial": r.number,
                "hash": r.hash,
                "error": r.error,
                "energy_nj": r.energy_nj,
                "accuracy_clean": r.accuracy("clean"),
                "accuracy_noisy_mean": r.accuracy("mean"),
                "accuracy_noisy_p5": r.accuracy("p5"),
                "params": (r.evaluation or {}).get("params"),
                "macs": (r.evaluation or {}).get("macs"),
                "generation": r.generation,
                "operator": r.operator,
                "layers": compact_layers(r.arch or {"layers": []}),
                "arch": r.arch,
            }
        )
    return rows


def _front_table(rows: list[dict[str, Any]], title: str, width: int = 80) -> Table:
    """The front as a table that fits `width` columns: numbers never wrap or shrink, and the layer sequence takes
    the remaining width on one line, shortened with an ellipsis (the whole architecture is in `--json`)."""
    headers = ("trial", "error", "noisy (p5)", "clean", "nJ", "params")
    cells = [
        (
            str(row["trial"]),
            f"{row['error']:.4f}",
            f"{row['accuracy_noisy_mean']:.3f} ({row['accuracy_noisy_p5']:.3f})",
            f"{row['accuracy_clean']:.3f}",
            f"{row['energy_nj']:.3g}",
            _fmt_int(row["params"] or 0),
        )
        for row in rows
    ]
    widths = [max([len(header)] + [len(c[i]) for c in cells]) for i, header in enumerate(headers)]
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, expand=False)
    for header, column_width in zip(headers, widths):
        table.add_column(header, justify="right", no_wrap=True, width=column_width)
    layers_width = max(10, width - sum(w + 3 for w in widths) - 2)  # each column: its text, padding and a gap
    table.add_column("layers", no_wrap=True, overflow="ellipsis", width=layers_width)
    for row, numbers in zip(rows, cells):
        table.add_row(*numbers, escape(row["layers"]))
    return table


def _write_plot(out: Path, records: list[Any], title: str, objective: str) -> Path:
    from uhnas.records import feasible_front
    from uhnas.report.pareto import plot_pareto

    evaluated = [r for r in records if not r.failed]
    front = {r.number for r in feasible_front(records)}
    label = {
        "mean": "error under non-idealities (1 - mean noisy accuracy)",
        "p5": "error (1 - 5th-percentile noisy accuracy)",
        "clean": "error (1 - clean accuracy)",
    }[objective]
    return plot_pareto(
        [r.error for r in evaluated],
        [r.energy_nj for r in evaluated],
        [r.feasible for r in evaluated],
        [r.number in front for r in evaluated],
        out / "pareto.png",
        title=title,
        error_label=label,
    )


_INSTALLED_METHODS = ", ".join(method_names())  # the uhnas.methods entry points (plugins included)


@app.command()
def search(
    config: Annotated[Path | None, typer.Option(help="Run configuration YAML (e.g. examples/digits_mzi.yaml).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (study.db, pareto.png, llm.db).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory to its budget.")] = None,
    method: Annotated[str | None, typer.Option(help=f"Search method; installed: {_INSTALLED_METHODS}.")] = None,
    backend: Annotated[str | None, typer.Option(help="Backend preset or YAML file.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a backend constant: key=value (repeatable).")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="digits, mnist or fashion-mnist.")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Directory holding MNIST-style IDX files.")] = None,
    seed: Annotated[int | None, typer.Option(min=0)] = None,
    population: Annotated[int | None, typer.Option(min=2)] = None,
    generations: Annotated[int | None, typer.Option(min=0)] = None,
    offspring: Annotated[int | None, typer.Option(min=1)] = None,
    objective: Annotated[
        str | None, typer.Option(help="mean, clean or p5: which accuracy the error objective uses.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    mc: Annotated[int | None, typer.Option(min=0, help="Monte-Carlo draws per candidate.")] = None,
    noise_aware: Annotated[bool | None, typer.Option("--noise-aware/--no-noise-aware")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes (default: CPU cores).")] = None,
    timeout: Annotated[float | None, typer.Option(min=0.0, help="Seconds per candidate before it is killed.")] = None,
    executor: Annotated[str | None, typer.Option(help="process, inline or ray.")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (with --executor ray).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or auto.")] = None,
    llm: Annotated[str | None, typer.Option(help="openai (any OpenAI-compatible server) or replay:<run dir>.")] = None,
    model: Annotated[str | None, typer.Option(help="LLM model name.")] = None,
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible endpoint, e.g. http://localhost:11434/v1.")
    ] = None,
    api_key_env: Annotated[
        str | None, typer.Option(help="Name of the environment variable holding the API key.")
    ] = None,
    llm_budget_tokens: Annotated[
        int | None, typer.Option(min=1, help="Stop the run cleanly at this many LLM tokens.")
    ] = None,
    llm_budget_usd: Annotated[
        float | None, typer.Option(min=0.0, help="Stop the run cleanly at this LLM cost.")
    ] = None,
    system_prompt: Annotated[str | None, typer.Option(help="hardware-aware, generic or minimal.")] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0)] = None,
    llm_timeout: Annotated[
        float | None, typer.Option(min=1.0, help="Seconds one LLM call may take (CPU servers: several minutes).")
    ] = None,
    llm_max_tokens: Annotated[int | None, typer.Option(min=16, help="Longest LLM answer, in tokens.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the final front and summary as JSON; no live display.")
    ] = False,
) -> None:
    """Search architectures: NSGA-II (or another method) over accuracy under device noise and energy."""
    with cli_errors():
        from uhnas.config import apply_overrides, config_from_dict, read_yaml
        from uhnas.search.engine import run_search
        from uhnas.store import RunStore

        flags = dict(
            method=method,
            backend=backend,
            backend_set=set_,
            dataset=dataset,
            data_dir=data_dir,
            seed=seed,
            population=population,
            generations=generations,
            offspring=offspring,
            objective=objective,
            epochs=epochs,
            mc=mc,
            noise_aware=noise_aware,
            workers=workers,
            timeout=timeout,
            executor=executor,
            ray_address=ray_address,
            device=device,
            llm=llm,
            model=model,
            base_url=base_url,
            api_key_env=api_key_env,
            llm_budget_tokens=llm_budget_tokens,
            llm_budget_usd=llm_budget_usd,
            system_prompt=system_prompt,
            temperature=temperature,
            llm_timeout=llm_timeout,
            llm_max_tokens=llm_max_tokens,
        )
        if resume is not None:
            if config is not None or (out is not None and out != resume):
                raise CLIError(
                    "--resume takes the run directory and its stored config; do not combine it with --config "
                    "or another --out"
                )
            if not RunStore.exists(resume):
                raise CLIError(f"{resume}: no run to resume (no study.db)")
            base, source, run_dir = RunStore.open(resume).metadata()["config"], f"{resume} (stored config)", resume
        else:
            if out is None:
                raise CLIError("--out DIR is required (the run directory)")
            base, source, run_dir = (read_yaml(config) if config else {}), str(config or "defaults"), out
            provider = llm or ((base.get("llm") or {}).get("provider") if isinstance(base.get("llm"), dict) else None)
            if isinstance(provider, str) and provider.startswith("replay:"):
                base = _with_recorded_llm(base, provider)
        resolved = config_from_dict(apply_overrides(base, _search_overrides(**flags)), source=source)
        if as_json:
            result = run_search(resolved, run_dir, resume=resume is not None)
        else:
            from uhnas.report.live import LiveDisplay

            console.print(
                f"[bold]uhnas search[/bold] {resolved.method} on {resolved.dataset} / {resolved.backend}: "
                f"{resolved.budget} evaluations → {run_dir}"
            )
            llm_db = Path(run_dir) / "llm.db" if resolved.llm is not None else None
            with LiveDisplay(console, llm_db=llm_db) as display:
                result = run_search(resolved, run_dir, resume=resume is not None, progress=display)
        plot = _write_plot(
            run_dir, result.records, f"{resolved.method} on {resolved.dataset} / {resolved.backend}", resolved.objective
        )
        rows = _front_rows(result.front)
        accounting = RunStore.open(run_dir).llm_accounting() if resolved.llm is not None else None
        summary = {**result.summary, **({"llm": accounting} if accounting is not None else {})}
        if as_json:
            _print_json({"out": str(run_dir), "front": rows, "summary": summary, "pareto_png": str(plot)})
            return
        console.print(
            _front_table(rows, f"Pareto front ({len(rows)} of {len(result.records)} candidates)", console.width)
        )
        console.print(
            f"hypervolume {result.hypervolume:.4f}; plot {plot}; dashboard: optuna-dashboard sqlite:///{run_dir}/study.db"
        )
        if accounting is not None:
            console.print(escape(llm_summary_line(accounting)), soft_wrap=True)


def _with_recorded_llm(base: dict[str, Any], provider: str) -> dict[str, Any]:
    """The config with the LLM settings of the run a "replay:<run dir>" provider replays (its run.yaml): model,
    sampling, answer length, prompts and repairs must be the recorded ones for the requests to match. Explicit
    flags still override them."""
    import yaml

    target = Path(provider[len("replay:") :]).expanduser()
    run_dir = target.parent if target.is_file() else target
    run_file = run_dir / "run.yaml"
    try:
        recorded = ((yaml.safe_load(run_file.read_text(encoding="utf-8")) or {}).get("config") or {}).get("llm")
    except (OSError, yaml.YAMLError):
        recorded = None
    if not isinstance(recorded, dict):
        if isinstance(base.get("llm"), dict) and base["llm"].get("model"):
            return base
        raise CLIError(f"{provider}: no recorded run configuration ({run_file}) to take the LLM settings from; "
                       "pass --model and the run's LLM settings")  # fmt: skip
    own = base.get("llm") if isinstance(base.get("llm"), dict) else {}
    settings = {k: v for k, v in recorded.items() if k not in ("provider", "shared_cache")}
    return {**base, "llm": {**own, **settings, "provider": provider}}


def llm_summary_line(acc: dict[str, Any]) -> str:
    """One line of LLM accounting: calls, tokens, cost, answers by verdict, LLM share of proposals and front."""
    p, f = acc["proposals"], acc["front"]
    cost = f", ${acc['cost_usd']:.4f}" if acc.get("cost_usd") is not None else ""
    answers = ", ".join(f"{k} {v}" for k, v in acc["answers"].items()) or "none"
    share = f"{p['llm']}/{p['slots']}" + (f" ({p['llm_share']:.0%})" if p["llm_share"] is not None else "")
    spc = f", {acc['seconds_per_call']:.1f} s/call" if acc.get("seconds_per_call") is not None else ""
    return (
        f"LLM: {acc['calls']} calls ({acc['replayed_calls']} replayed), {acc['prompt_tokens']:,} prompt + "
        f"{acc['completion_tokens']:,} completion tokens{cost}{spc}; answers: {answers}; proposals by the LLM "
        f"{share}, conventional fallback {p['fallback']}; front {f['llm']}/{f['size']} by the LLM"
    )


def _open_run(out: Path) -> Any:
    """The run store in `out`, or a one-line error when there is none."""
    from uhnas.store import RunStore

    if not RunStore.exists(out):
        raise CLIError(f"{out}: no run here (no study.db)")
    return RunStore.open(out)


@app.command()
def status(
    out: Annotated[Path, typer.Argument(help="Run directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Progress of a run: trials against the budget, failures, generation, hypervolume, front size."""
    with cli_errors():
        data = _open_run(out).status().to_dict()
        if as_json:
            _print_json(data)
            return
        accounting = data.pop("llm", None)
        table = Table(title=f"run {out}")
        table.add_column("")
        table.add_column("", justify="right")
        for key, value in data.items():
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        console.print(table)
        if accounting is not None:
            console.print(escape(llm_summary_line(accounting)), soft_wrap=True)


@app.command()
def pareto(
    out: Annotated[Path, typer.Argument(help="Run directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list of front members.")] = False,
) -> None:
    """The feasible Pareto front of a run: hash, error, energy, parameters, layers."""
    with cli_errors():
        rows = _front_rows(_open_run(out).front())
        if as_json:
            _print_json(rows)
            return
        console.print(_front_table(rows, f"Pareto front of {out} ({len(rows)} members)", console.width))


# --------------------------------------------------------------------------------------- prompts
prompts_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="The LLM operators' prompt templates.")
app.add_typer(prompts_app, name="prompts")


@prompts_app.command("render")
def prompts_render(
    config: Annotated[
        Path | None, typer.Option(help="Run configuration YAML (backend, dataset, llm.system_prompt).")
    ] = None,
    kind: Annotated[str, typer.Option(help="init, mutate, crossover, reflect, llmatic_mutate or genius.")] = "mutate",
    system_prompt: Annotated[str | None, typer.Option(help="hardware-aware, generic or minimal.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The messages as JSON.")] = False,
) -> None:
    """Print what the model would see, with the config's backend and dataset and an example population."""
    with cli_errors():
        from uhnas.arch import architecture_schema
        from uhnas.config import config_from_dict, read_yaml
        from uhnas.data import dataset_spec
        from uhnas.hardware.registry import load_backend
        from uhnas.llm.prompting import example_context, render_messages

        resolved = config_from_dict(read_yaml(config) if config else {}, source=str(config or "defaults"))
        context = example_context(architecture_schema())
        shape, classes = dataset_spec(resolved.dataset)
        context["backend"] = load_backend(resolved.backend, list(resolved.backend_overrides)).describe().to_dict()
        context["task"] = {
            "dataset": resolved.dataset,
            "input_shape": list(shape),
            "num_classes": classes,
            "epochs": resolved.training.epochs,
        }
        context["objective"] = resolved.objective
        variant = system_prompt or (resolved.llm.system_prompt if resolved.llm else None)
        messages = render_messages(kind, context, system_variant=variant)
        if as_json:
            _print_json(messages)
            return
        for message in messages:
            sys.stdout.write(f"===== {message['role']} =====\n{message['content']}\n")


def main() -> None:
    """Entry point for `python -m uhnas`."""
    app()


from uhnas.cli_study import study_app  # noqa: E402  (at the end: cli_study imports this module's helpers)

app.add_typer(study_app, name="study")

from uhnas.cli_report import report  # noqa: E402  (at the end, like study_app)

app.command("report")(report)
