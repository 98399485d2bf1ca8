"""The `vcontrast` command line: one typed function per command; docstrings become `--help`.

Heavy imports (torch, transformers) happen inside each command so that `vcontrast --help` stays fast.

Error policy (in one place, [`main`]): a user error (a bad argument, file, model folder, device, image or data row)
exits with status 2 and one line `error: ...` on stderr that names the bad thing and the fix, no traceback. Commands
signal one by raising `ValueError`/`TypeError` from vcontrast's own checks (or `typer.BadParameter`); a missing or
unwritable file (`FileNotFoundError`, `PermissionError`, ...) counts too. Anything else is a bug: the traceback is
shown with a line saying so, status 1.
"""

from __future__ import annotations

import linecache
import sys
import traceback
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

    run_demo(out, n_scenes=n_scenes, n_items=n_items, model_path=model, echo=print, color=sys.stdout.isatty())


def _register() -> None:
    # Command functions live beside the code they drive; their modules import torch/transformers lazily.
    from vcontrast.bench.cli import LMMS_EVAL_CONTEXT, eval_command, lmms_eval_command
    from vcontrast.cal.cli import cal_app, train
    from vcontrast.crg.cli import ask, rerank, score
    from vcontrast.toy.cli import experiment_command, gates_command, train_command

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
    toy_app.command("gates")(gates_command)
    app.add_typer(toy_app, name="toy")


_register()


# Errors that name a path the user gave: user errors wherever they are raised.
_FILE_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is the user's to fix (status 2, one line) rather than a bug in vcontrast (traceback).

    User errors are vcontrast's deliberate checks (a `raise ValueError`/`TypeError` statement in vcontrast's own
    code: an implicit `ValueError`, such as a failed tuple unpacking, or one raised inside torch is a bug) and file
    system errors, which name the path.
    """
    if isinstance(error, _FILE_ERRORS):
        return True
    if not isinstance(error, ValueError | TypeError) or error.__traceback__ is None:
        return False
    tb = error.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    line = linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).lstrip()
    return module.split(".")[0] == "vcontrast" and line.startswith("raise")


def _parser_exceptions() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    # (usage errors, aborts) of the command-line parser: typer >= 0.25 ships its own copy of click (TyperException,
    # typer.Abort); older releases raise click's.
    usage, aborts = [], []
    if hasattr(typer, "TyperException"):
        usage.append(typer.TyperException)
        aborts.append(typer.Abort)
    try:
        import click
    except ImportError:
        pass
    else:
        usage.append(click.ClickException)
        aborts.append(click.exceptions.Abort)
    return tuple(usage), tuple(aborts)


def _error_line(error: BaseException) -> str:
    # One line: the message of an OSError names the path after the errno text; keep the whole message otherwise.
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.strerror or type(error).__name__}: {error.filename!s}"
    return " ".join(str(error).split()) or type(error).__name__


def run(argv: list[str] | None = None) -> int:
    """Run the command line on `argv` (default: `sys.argv[1:]`) under the error policy; returns the exit status.

    Examples:

    ```python
    >>> run(["ask", "examples/scene.png", "what color is the square ?", "--alpha", "-1"])  # one line on stderr
    2
    ```
    """
    usage_errors, aborts = _parser_exceptions()
    try:
        result = app(args=argv, prog_name="vcontrast", standalone_mode=False)
    except usage_errors as error:  # typer.BadParameter, a missing argument, an option of the wrong type
        if type(error).__name__ == "NoArgsIsHelpError":
            error.show()  # `vcontrast` alone prints the help
            return 2
        print(f"error: {' '.join(error.format_message().split())}", file=sys.stderr)
        command = getattr(getattr(error, "ctx", None), "command_path", None)
        if command:
            print(f"(see '{command} --help')", file=sys.stderr)
        return error.exit_code
    except (*aborts, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 (the policy's last resort: a bug, shown with its traceback)
        if is_user_error(error):
            print(f"error: {_error_line(error)}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(
            f"error: unexpected {type(error).__name__}: this is a bug in vcontrast; please report it with the "
            "traceback above and the command line",
            file=sys.stderr,
        )
        return 1
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `vcontrast` console script (argv for tests): [`run`], then exit with its status."""
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
