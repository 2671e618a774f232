"""The ``robench`` command line. Each command is a thin wrapper over one function.

torch, ART and matplotlib are imported inside the commands that need them, so
``robench --help`` and ``robench list defenses`` start fast.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List, Optional, Sequence

import click

from robench.errors import RobenchError, UsageError
from robench.registry import KINDS, registry


class RobenchGroup(click.Group):
    """Turns every user error into one line on stderr and a non-zero exit."""

    def main(self, args: Optional[Sequence[str]] = None, prog_name: Optional[str] = None,
             complete_var: Optional[str] = None, standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            return super().main(args=args, prog_name=prog_name or "robench", complete_var=complete_var,
                                standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.UsageError as exc:  # includes BadParameter, NoSuchOption
            _fail(_one_line(exc.format_message()), 2)
        except (KeyboardInterrupt, click.exceptions.Abort):
            _fail("interrupted; finished work was kept", 130)
        except RobenchError as exc:
            _fail(_one_line(str(exc)), exc.exit_code)
        except OSError as exc:  # disk full, permission denied, ...
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            _fail(f"{exc.strerror or exc}{where}", 1)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@click.group(cls=RobenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="robench", prog_name="robench")
def cli() -> None:
    """Adversarial-robustness benchmarks for GM-loss and other feature-space defenses."""


def main() -> None:
    cli()


# -- shared option bundles ---------------------------------------------------------

def device_option(f):
    return click.option("--device", default="auto", show_default=True,
                        help="auto, cpu or cuda.")(f)


def seed_option(f):
    return click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")(f)


def quiet_option(f):
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars.")(f)


# -- list / inspect ------------------------------------------------------------------

@cli.command("list")
@click.argument("kind", required=False, type=click.Choice(KINDS))
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(kind: Optional[str], pattern: Optional[str], as_json: bool) -> None:
    """List registered attacks, defenses, detectors, datasets and archs (PATTERN: fnmatch)."""
    kinds = [kind] if kind else list(KINDS)
    listing: Dict[str, List[Dict[str, str]]] = {k: _list_kind(k, pattern) for k in kinds}
    if as_json:
        click.echo(json.dumps(listing if not kind else listing[kind], indent=2))
        return
    for k in kinds:
        if not kind:
            click.echo(f"{k}:")
        for item in listing[k]:
            click.echo(f"{'  ' if not kind else ''}{item['name']:<28} {item['provider']}")


def _list_kind(kind: str, pattern: Optional[str]) -> List[Dict[str, str]]:
    import fnmatch

    entries = [e.as_dict() for e in registry(kind).entries()]
    if kind == "attacks":
        from robench.attacks import expand_families

        by_name = {e["name"]: e for e in entries}
        expanded = []
        for name in expand_families(list(by_name)):
            family = by_name.get(name.partition(":")[0] if ":" in name else name)
            expanded.append({**family, "name": name})
        entries = expanded
    return [e for e in entries if not pattern or fnmatch.fnmatch(e["name"], pattern)]


@cli.command()
@click.argument("checkpoint")
@click.option("--arch", default=None, help="Architecture, for official checkpoints it cannot infer.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(checkpoint: str, arch: Optional[str], as_json: bool) -> None:
    """Print the metadata of a robench or official GM-Loss checkpoint."""
    from robench.checkpoints import describe

    info = describe(checkpoint, arch=arch)
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    for key in ("path", "source", "arch", "head", "defense", "defense_params", "dataset", "num_classes",
                "feature_dim", "input_shape", "mean", "std", "metrics", "parameters", "sha256"):
        click.echo(f"{key:<15} {info.get(key)}")


# -- train -------------------------------------------------------------------------------

@cli.command()
@click.option("--defense", required=True, help="Defense name, optionally NAME:key=value,...")
@click.option("--dataset", required=True, help="mnist5k, digits, mnist:PATH, cifar10:PATH or npz:PATH.")
@click.option("--arch", default="small-cnn", show_default=True, help="Architecture name.")
@click.option("--epochs", type=int, default=None, help="Epochs (default depends on the dataset).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--feature-dim", type=int, default=None, help="Feature dimension (default: the arch's).")
@click.option("--train-half", type=click.Choice(["a", "b"]), default=None,
              help="Train on one of two disjoint halves of the train split (black-box surrogates).")
@seed_option
@device_option
@quiet_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint file to write.")
def train(defense: str, dataset: str, arch: str, epochs: Optional[int], batch_size: int, lr: float,
          feature_dim: Optional[int], train_half: Optional[str], seed: int, device: str, quiet: bool,
          out: str) -> None:
    """Train a model with a registered defense and write a checkpoint."""
    from robench.commands import run_train

    run_train(defense=defense, dataset=dataset, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr,
              feature_dim=feature_dim, train_half=train_half, seed=seed, device=device, quiet=quiet, out=out)


# -- attack ------------------------------------------------------------------------------

@cli.command()
@click.option("--model", "models", multiple=True, required=True, help="Checkpoint (repeatable).")
@click.option("--attack", "attacks", multiple=True, required=True,
              help="Attack, optionally NAME:key=value,... (repeatable).")
@click.option("--eps", "eps", multiple=True, type=float, required=True, help="Budget in [0,1] pixel space (repeatable).")
@click.option("--threat", "threats", multiple=True, default=["gray-box"], show_default=True,
              help="gray-box, white-box or black-box (repeatable).")
@click.option("--surrogate", default=None, help="Checkpoint the black-box attacker crafts on.")
@click.option("--detector", "detectors", multiple=True, default=["auto"], show_default=True,
              help="Detector name or auto (repeatable).")
@click.option("--dataset", default=None, help="Dataset spec (default: the checkpoint's).")
@click.option("--arch", default=None, help="Architecture, for official checkpoints it cannot infer.")
@click.option("--n", type=int, default=500, show_default=True, help="Test points attacked.")
@click.option("--batch-size", type=int, default=250, show_default=True)
@seed_option
@device_option
@quiet_option
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where cells run: this process, or Ray tasks.")
@click.option("--ray-address", default=None, help="Address of an existing Ray cluster (default: start one).")
@click.option("--force", is_flag=True, help="Overwrite a run directory made with another configuration.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory.")
def attack(models, attacks, eps, threats, surrogate, detectors, dataset, arch, n, batch_size, seed, device,
           executor, ray_address, quiet, force, out) -> None:
    """Attack checkpoints under a threat model and write a run directory."""
    from robench.runner import AttackConfig, run_attack

    cfg = AttackConfig(models=list(models), attacks=list(attacks), eps=list(eps), threats=list(threats),
                       surrogate=surrogate, detectors=list(detectors), dataset=dataset, arch=arch, n=n,
                       batch_size=batch_size, seed=seed, device=device, executor=executor,
                       ray_address=ray_address)
    summary = run_attack(cfg, out, quiet=quiet, force=force)
    click.echo(summary)


# -- run --------------------------------------------------------------------------------

@cli.command("run")
@click.argument("suite")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Run directory (default: the suite's).")
@click.option("--n", type=int, default=None, help="Override the suite's n.")
@click.option("--batch-size", type=int, default=None, help="Override the suite's batch size.")
@click.option("--seed", type=int, default=None, help="Override the suite's seed.")
@click.option("--device", default=None, help="Override the suite's device.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None, help="Override the executor.")
@click.option("--ray-address", default=None, help="Address of an existing Ray cluster.")
@quiet_option
@click.option("--force", is_flag=True, help="Overwrite a run directory made with another configuration.")
def run_cmd(suite: str, out, n, batch_size, seed, device, executor, ray_address, quiet: bool, force: bool) -> None:
    """Run the whole grid a SUITE.yaml describes (finished cells are reused)."""
    from robench.suite import run_suite

    overrides = {"n": n, "batch_size": batch_size, "seed": seed, "device": device, "executor": executor,
                 "ray_address": ray_address}
    click.echo(run_suite(suite, out=out, overrides=overrides, quiet=quiet, force=force))


# -- report / demo ---------------------------------------------------------------------

@cli.command()
@click.argument("run_dirs", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report directory.")
def report(run_dirs, out: str) -> None:
    """Build CSV tables, plots and index.html from run directories."""
    from robench.reports import build_report

    index = build_report(list(run_dirs), out)
    click.echo(f"report written to {index}")


@cli.command()
@click.option("--out", default="reports/demo", show_default=True, type=click.Path(file_okay=False))
@device_option
@quiet_option
def demo(out: str, device: str, quiet: bool) -> None:
    """Train softmax and GM on mnist5k, attack both, detect, and write a report."""
    from robench.demo import run_demo

    click.echo(run_demo(out, device=device, quiet=quiet))


if __name__ == "__main__":  # pragma: no cover
    main()
