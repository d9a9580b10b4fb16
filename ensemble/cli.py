"""The ``ens`` command line: one click group, one subcommand per job.

Heavy imports (torch, timm) happen inside the commands so ``ens --help`` is instant.
User errors (:class:`ensemble.errors.EnsError`) print one line and exit with their code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import EnsError

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="ens")
def cli() -> None:
    """ens -- deep ensembles of CNNs for medical image classification.

    \b
      ens demo                                      # a small end-to-end run, no download
      ens train --dataset hela --opt dgrad --n 7    # make sure 7 DGrad members exist
      ens fuse --dataset hela "SGD14+DGrad7+Cos1_7" # sum-rule fusion of stored members
      ens report                                    # tables and figures from members/
    """


# --------------------------------------------------------------------------- optimizers
@cli.command()
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also draw the cyclic terms of Cos1/Cos2 and the CLMR/TASO schedules to this PNG.")
def optimizers(plot_path: Path | None) -> None:
    """List the optimizers of the registry (label, kind, defaults, paper)."""
    from rich.console import Console
    from rich.table import Table

    from .optim import REGISTRY

    table = Table(title="ens optimizers")
    for col in ("label", "kind", "defaults", "paper"):
        table.add_column(col, overflow="fold")
    for info in REGISTRY.values():
        defaults = ", ".join(f"{k}={v}" for k, v in info.defaults.items())
        table.add_row(info.label, info.kind, defaults, info.paper)
    Console().print(table)
    if plot_path is not None:
        from .optim.plot import plot_schedules

        click.echo(f"wrote {plot_schedules(plot_path)}")


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and an exit code."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except EnsError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
