"""The `uhnas` command: architecture tools, single evaluations, backends, searches and their results.

Every command prints a readable table by default and one JSON document with `--json`. Errors in the
user's input (files, flags, configs, architectures) end with a one-line `error: ...` on stderr and
exit code 2; nothing prints a traceback unless UHNAS_DEBUG=1.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # usage errors as click's plain "Error: ..." line, not a box
    help="uhnas: LLM-guided, hardware-aware neural architecture search.",
)
arch_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="The architecture IR: schema and checks.")
app.add_typer(arch_app, name="arch")

console = Console()
EXIT_USAGE = 2


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is a complete one-line explanation for the user."""
    from uhnas.arch import ArchitectureError
    from uhnas.data import DatasetError
    from uhnas.hardware.registry import BackendError

    errors: list[type[BaseException]] = [CLIError, ArchitectureError, DatasetError, BackendError, ValueError, FileNotFoundError]
    try:
        from uhnas.llm.errors import LLMError

        errors.append(LLMError)
    except ImportError:  # the LLM layer is optional for the non-LLM commands
        pass
    return tuple(errors)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn expected failures into `error: <one line>` + exit 2, and anything else into one line + exit 1."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as error:  # the last line of defence: never a bare traceback
        if os.environ.get("UHNAS_DEBUG"):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, _user_errors()):
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        typer.echo(f"internal error: {type(error).__name__}: {message} (set UHNAS_DEBUG=1 for the traceback)", err=True)
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
    dataset: Annotated[str, typer.Option(help="digits, mnist or fashion-mnist (sets input shape and classes).")] = "digits",
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
                        {"index": i.index, "type": i.type, "out_shape": list(i.out_shape), "params": i.params, "macs": i.macs}
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
            table.add_row(str(info.index), f"{info.type}({detail})", "x".join(map(str, info.out_shape)), _fmt_int(info.params), _fmt_int(info.macs))
        table.add_row("", "[bold]total[/bold]", "", f"[bold]{_fmt_int(summary.params)}[/bold]", f"[bold]{_fmt_int(summary.macs)}[/bold]")
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
        rows.append((f"validation accuracy under noise ({noisy['draws']} draws)", f"{noisy['mean']:.4f} ± {noisy['std']:.4f} (p5 {noisy['p5']:.4f})"))
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
        rows.append((f"  violates {violation['constraint']}", f"{violation['actual']:.4g} > {violation['limit']:.4g} {violation['unit']}"))
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
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a backend constant: key=value (repeatable).")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 20,
    batch_size: Annotated[int, typer.Option(min=1, help="Training batch size.")] = 64,
    lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate.")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="Adam weight decay.")] = 0.0,
    seed: Annotated[int, typer.Option(min=0, help="Seed for initial weights, batches and noise draws.")] = 0,
    mc: Annotated[int, typer.Option(min=0, help="Monte-Carlo draws of the device's non-idealities.")] = 32,
    noise_aware: Annotated[bool, typer.Option(help="Sample the backend's non-idealities while training.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    data_dir: Annotated[Optional[Path], typer.Option(help="Directory holding MNIST-style IDX files.")] = None,
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
            arch, dataset, hw, train_config=config, mc=mc, noise_aware=noise_aware, device=device,
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
            table = Table(title=f"{card['name']}  [dim]({card['family']}, {card['precision']})[/dim]", title_justify="left")
            table.add_column("constant")
            table.add_column("value", justify="right")
            table.add_column("unit")
            table.add_column("source", overflow="fold")
            for key, constant in card["constants"].items():
                table.add_row(key, str(constant["value"]), constant["unit"], constant["source"])
            console.print(card["description"])
            console.print(table)
        for name, reason in broken.items():
            console.print(f"[red]backend plugin {name!r} failed to load:[/red] {reason}")


def main() -> None:
    """Entry point for `python -m uhnas`."""
    app()
