"""The `vcontrast` command line: one typed function per command; docstrings become `--help`.

Heavy imports (torch, transformers) happen inside each command so that `vcontrast --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="vcontrast",
    help="Make vision-language models look at the image: CRG at inference, CAL at training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
def info(
    model: Annotated[
        str | None,
        typer.Option(help="A model folder: print its family and whether vcontrast tests it (reads the config only)."),
    ] = None,
) -> None:
    """Print the version and the supported model families (config.model_type values), or how a model is supported."""
    import vcontrast

    print(f"vcontrast {vcontrast.__version__}")
    print("supported model types: " + ", ".join(vcontrast.supported_model_types()))
    if model is None:
        return
    from vcontrast.models.loading import model_support

    support = model_support(model)
    print(f"model: {model} ({support.model_class}, model type {support.model_type!r})")
    if support.adapter is None:
        print(f"not supported: {support.refusal}")
    elif support.tested:
        print(f"family: {support.model_type} ({support.adapter}), tested")
    else:
        print(f"family: none ({support.adapter}), untested: the generic adapter, used with a warning")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the pictures and the results table.")] = Path("out"),
    n_scenes: Annotated[int, typer.Option(help="How many toy scenes to show.")] = 4,
    n_items: Annotated[int, typer.Option(help="Test items per toy task in the results table.")] = 40,
    model: Annotated[
        str | None, typer.Option(help="A model folder; default: the toy model shipped with vcontrast.")
    ] = None,
) -> None:
    """The main job: toy scenes, answers with and without CRG, a CAL weight heatmap and a small results table."""
    from vcontrast.demo import run_demo

    run_demo(out, n_scenes=n_scenes, n_items=n_items, model_path=model, echo=print)


def _register() -> None:
    # Command functions live beside the code they drive; their modules import torch/transformers lazily.
    from vcontrast.bench.cli import LMMS_EVAL_CONTEXT, eval_command, lmms_eval_command
    from vcontrast.cal.cli import cal_app, train
    from vcontrast.crg.cli import ask, rerank, score
    from vcontrast.toy.cli import experiment_command, train_command

    app.command("ask")(ask)
    app.command("score")(score)
    app.command("rerank")(rerank)
    app.command("eval")(eval_command)
    app.command("lmms-eval", context_settings=LMMS_EVAL_CONTEXT)(lmms_eval_command)
    app.command("train")(train)
    app.add_typer(cal_app, name="cal")
    toy_app = typer.Typer(help="The toy world: retrain the shipped model, run the measured experiments.")
    toy_app.command("train")(train_command)
    toy_app.command("experiment")(experiment_command)
    app.add_typer(toy_app, name="toy")


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `vcontrast` console script (argv for tests)."""
    app(args=argv, prog_name="vcontrast")


if __name__ == "__main__":
    main()
