"""The ``deprune-onnx`` command group.

Each command lives in its own module of this package and is registered below. Heavy libraries (onnx,
onnxruntime, tensorrt, torch) are imported inside the commands, so ``--help`` stays instant and a missing optional
backend never breaks the other commands. Every user error becomes one line on stderr and exit code 2; a failed
check exits 1. Set ``DEPRUNE_DEBUG=1`` to see the traceback of an unexpected error.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from deprune_onnx.cli.options import FLAG_NAMES
from deprune_onnx.errors import EXIT_USAGE, DepruneError
from deprune_onnx.extras import missing_dependency_error
from deprune_onnx.options import OptionError


class ErrorReportingGroup(click.Group):
    """A click group that turns exceptions into one line on stderr and the documented exit codes.

    Click's own usage errors print a usage block; we print the single error line (it names the option) so
    scripts can rely on one line per failure.
    """

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.Abort:
            click.echo("deprune-onnx: aborted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            hint = " (see --help)" if isinstance(exc, click.UsageError) else ""
            click.echo(f"deprune-onnx: error: {' '.join(exc.format_message().split())}{hint}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DepruneError as exc:
            message = exc.render(FLAG_NAMES) if isinstance(exc, OptionError) else str(exc)
            click.echo(f"deprune-onnx: error: {message}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            hint = " (finetune: the same command with --resume continues from the last finished epoch)" \
                if ctx.invoked_subcommand == "finetune" else ""
            click.echo(f"deprune-onnx: interrupted{hint}", err=True)
            ctx.exit(130)
        except Exception as exc:  # a bug, or an input case we did not foresee: still one line, never a traceback
            missing = missing_dependency_error(exc, ctx.invoked_subcommand) \
                if isinstance(exc, ModuleNotFoundError) else None
            if missing is not None:  # an optional dependency imported lazily: name the pip extra
                click.echo(f"deprune-onnx: error: {missing}", err=True)
                ctx.exit(missing.exit_code)
            if os.environ.get("DEPRUNE_DEBUG"):
                raise
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            click.echo(f"deprune-onnx: error: unexpected failure ({message}); "
                       "rerun with DEPRUNE_DEBUG=1 for the traceback", err=True)
            ctx.exit(EXIT_USAGE)


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="deprune-onnx")
def main() -> None:
    """Prune depthwise-separable CNNs in ONNX the DEPrune way (NeurIPS 2024) and run them under TensorRT.

    \b
    Typical use:
      deprune-onnx inspect model.onnx
      deprune-onnx prune model.onnx pruned.onnx --method bh --dw-ratio 0.5
      deprune-onnx compare model.onnx pruned.onnx
    """


# One module per command, each exposing ``command``; the order here is the order of ``--help``.
COMMAND_MODULES: tuple[str, ...] = (
    "inspect_cmd",
    "prune_cmd",
    "compare_cmd",
    "lower_cmd",
    "build_plugin_cmd",
    "plugin_path_cmd",
    "build_engine_cmd",
    "bench_cmd",
    "tune_cmd",
    "eval_cmd",
    "sweep_cmd",
    "report_cmd",
    "export_masks_cmd",
    "finetune_cmd",
)


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        main.add_command(importlib.import_module(f"deprune_onnx.cli.{name}").command)


_register_commands()

if __name__ == "__main__":
    sys.exit(main())
