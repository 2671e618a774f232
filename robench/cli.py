"""The ``robench`` command line. Each command is a thin wrapper over one function.

The options of ``attack`` (and the overrides of ``run``) are generated from the
run configuration's schema (:mod:`robench.config`). torch, ART and matplotlib
are imported inside the commands that need them, so ``robench --help`` and
``robench list defenses`` start fast.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import click

from robench.config import VerifyRunConfig, click_options
from robench.errors import RobenchError
from robench.registry import KINDS


class Interrupted(Exception):
    """Ctrl-C inside a command (re-raised past Click, which would print a blank line first)."""


class CtrlC:
    """Ctrl-C while a command runs: remembered, and ignored once the command has returned.

    Remembered because a library interrupted in the middle of an import can fail
    afterwards with an unrelated exception (AttributeError, RecursionError); the
    command still ends as interrupted. Ignored afterwards because in the console
    script the process ends next, and Python's own handler would turn a Ctrl-C
    during interpreter teardown into a signal death of a command whose work is complete.
    """

    def __init__(self, console: bool) -> None:
        self.console, self.pressed, self.running, self.previous = console, False, False, None

    def __enter__(self) -> "CtrlC":
        self.running = True
        try:
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when ignored (nohup, &)
                self.previous = signal.signal(signal.SIGINT, self._pressed)
        except ValueError:  # signal handlers live in the main thread only
            pass
        return self

    def _pressed(self, signum: int, frame: Any) -> None:
        if self.running:
            self.pressed = True
            raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        self.running = False
        if self.previous is not None:  # SIG_IGN, not a Python handler: teardown would reset that to default
            signal.signal(signal.SIGINT, signal.SIG_IGN if self.console else self.previous)


class RobenchGroup(click.Group):
    """Turns every user error into one line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted() from None

    def main(self, args: Optional[Sequence[str]] = None, prog_name: Optional[str] = None,
             complete_var: Optional[str] = None, standalone_mode: bool = True, console: bool = False,
             **extra: Any) -> Any:
        with CtrlC(console) as ctrl:
            try:
                return super().main(args=args, prog_name=prog_name or "robench", complete_var=complete_var,
                                    standalone_mode=False, **extra)
            except click.exceptions.Exit as exc:
                sys.exit(exc.exit_code)
            except (Exception, KeyboardInterrupt) as exc:
                _fail_for(exc, ctrl.pressed)


def _fail_for(exc: BaseException, pressed: bool) -> None:
    """Exit with one line for an error the user can cause; re-raise anything else (a bug)."""
    if pressed or isinstance(exc, (Interrupted, KeyboardInterrupt, click.exceptions.Abort)):
        if sys.stderr.isatty():
            click.echo("", err=True)  # end the terminal's ^C echo
        _fail("interrupted; finished work was kept (run the same command again to continue)", 130)
    if isinstance(exc, click.UsageError):  # includes BadParameter, NoSuchOption
        _fail(_one_line(exc.format_message()), 2)
    if isinstance(exc, RobenchError):
        _fail(_one_line(str(exc)), exc.exit_code)
    if isinstance(exc, OSError):  # disk full, permission denied, ...
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        _fail(f"{exc.strerror or exc}{where}", 1)
    raise exc


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@click.group(cls=RobenchGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Shell completion (bash): eval \"$(_ROBENCH_COMPLETE=bash_source robench)\"")
@click.version_option(package_name="robench", prog_name="robench")
def cli() -> None:
    """Adversarial-robustness benchmarks for GM-loss and other feature-space defenses."""


def main() -> None:
    """The ``robench`` console script."""
    try:
        cli.main(console=True)
    except SystemExit as exc:
        if exc.code == 130:
            _exit_interrupted()
        raise


def _exit_interrupted() -> None:
    """Exit with 130 even if a library saw the KeyboardInterrupt first.

    Python ends a process by re-sending itself SIGINT when a KeyboardInterrupt
    escaped code a C extension ran (some run imports that way), which the shell
    reports as a signal death instead of the 130 and one line already printed.
    """
    import atexit
    import os

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def examples(*lines: str) -> str:
    """A command's ``--help`` epilog: real invocations, kept as written."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


# -- shared option bundles ---------------------------------------------------------

def device_option(f):
    return click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")(f)


def seed_option(f):
    return click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")(f)


def quiet_option(f):
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars.")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (for scripts).")(f)


def force_option(f):
    return click.option("--force", is_flag=True,
                        help="Overwrite a run directory made with another configuration.")(f)


def _echo_summary(summary: Any, as_json: bool) -> None:
    click.echo(json.dumps(summary.as_dict(), indent=2, sort_keys=True) if as_json else summary.text())


# -- list / inspect ------------------------------------------------------------------

class NameChoice(click.Choice):
    """A closed set of names whose error suggests the nearest ones, like the registries do."""

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        if value in self.choices:
            return value
        import difflib

        near = difflib.get_close_matches(str(value), list(self.choices), n=2, cutoff=0.4)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        self.fail(f"unknown kind '{value}'{hint} (known: {', '.join(self.choices)})", param, ctx)


@cli.command("list", epilog=examples("robench list", "robench list attacks 'pgd*'",
                                     "robench list detectors --json"))
@click.argument("kind", required=False, type=NameChoice(KINDS))
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(kind: Optional[str], pattern: Optional[str], as_json: bool) -> None:
    """List registered attacks, defenses, detectors, datasets and archs (PATTERN: fnmatch)."""
    from robench.commands import listing

    kinds = [kind] if kind else list(KINDS)
    found: Dict[str, List[Dict[str, str]]] = {k: listing(k, pattern) for k in kinds}
    if as_json:
        click.echo(json.dumps(found if not kind else found[kind], indent=2))
        return
    for k in kinds:
        if not kind:
            click.echo(f"{k}:")
        for item in found[k]:
            click.echo(f"{'  ' if not kind else ''}{item['name']:<28} {item['provider']}")


@cli.command(epilog=examples("robench inspect gm.pt", "robench inspect mnist_Net2_loss_gm.pt --json"))
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

@cli.command(epilog=examples(
    "robench train --defense gm --dataset mnist5k --out gm.pt",
    "robench train --defense softmax --dataset mnist5k --train-half b --out surrogate.pt",
    "robench train --defense pgd-at:preset=quick --dataset mnist5k --epochs 6 --out pgd-at.pt"))
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
@click.option("--allow-weak", is_flag=True,
              help="Exit 0 even when the model ends near chance (clean validation accuracy below 2x chance or "
                   "the defense's floor). Without it such a run writes the checkpoint, warns and exits 1: a "
                   "near-chance model makes every robustness number measured on it meaningless.")
def train(defense: str, dataset: str, arch: str, epochs: Optional[int], batch_size: int, lr: float,
          feature_dim: Optional[int], train_half: Optional[str], seed: int, device: str, quiet: bool,
          out: str, allow_weak: bool) -> None:
    """Train a model with a registered defense and write a checkpoint."""
    from robench.commands import keep_only_finished, run_train

    with keep_only_finished(str(Path(out).parent), own_folder=False):
        run_train(defense=defense, dataset=dataset, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr,
                  feature_dim=feature_dim, train_half=train_half, seed=seed, device=device, quiet=quiet, out=out,
                  allow_weak=allow_weak)


# -- attack / run -----------------------------------------------------------------------

@cli.command(epilog=examples(
    "robench attack --model gm.pt --model softmax.pt --attack fgsm --attack pgd:steps=40 "
    "--eps 0.1 --eps 0.3 --threat gray-box --threat white-box --detector auto --out runs/mnist",
    "robench attack --model gm.pt --attack standard --eps 0.3 --threat white-box --n 1000 --out runs/std",
    "robench attack --model gm.pt --attack pgd --eps 0.2 --threat black-box --surrogate surrogate.pt "
    "--out runs/bb --json"))
@click_options("attack")
@quiet_option
@json_option
@force_option
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory.")
def attack(quiet: bool, as_json: bool, force: bool, out: str, **options: Any) -> None:
    """Attack checkpoints under a threat model and write a run directory."""
    from robench.commands import check_writable_dir, keep_only_finished
    from robench.config import config_from_cli
    from robench.runner import run_attack
    from robench.validation import check

    check_writable_dir(out)
    cfg = check(config_from_cli(options))
    with keep_only_finished(out):
        summary = run_attack(cfg, out, quiet=quiet or as_json, force=force)
    _echo_summary(summary, as_json)


@cli.command("run", epilog=examples("robench run suites/mnist5k.yaml --out runs/mnist5k",
                                    "robench run my-suite.yaml --n 100 --device cpu --json"))
@click.argument("suite")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Run directory (default: the suite's).")
@click_options("run")
@quiet_option
@json_option
@force_option
def run_cmd(suite: str, out: Optional[str], quiet: bool, as_json: bool, force: bool, **options: Any) -> None:
    """Run the whole grid a SUITE.yaml describes (finished cells are reused)."""
    from robench.commands import check_writable_dir, keep_only_finished, suite_out
    from robench.config import overrides_from_cli
    from robench.suite import run_suite

    out_dir = suite_out(suite, out)
    if out_dir:
        check_writable_dir(out_dir)
    with keep_only_finished(out_dir):
        summary = run_suite(suite, out=out, overrides=overrides_from_cli(options), quiet=quiet or as_json,
                            force=force)
    _echo_summary(summary, as_json)


# -- verify ------------------------------------------------------------------------------

@cli.command(epilog=examples(
    "robench verify --model mlp-gm.pt --eps 0.02 --eps 0.05 --method exact --n 200 --out runs/mlp",
    "robench verify --model cnn.pt --eps 0.1 --method crown --detector none --out runs/cnn",
    "robench attack --model mlp-gm.pt --attack standard --eps 0.05 --threat white-box --out runs/mlp  "
    "# same --out: the report shows the gap"))
@click_options("verify", VerifyRunConfig)
@quiet_option
@json_option
@force_option
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory (may hold attack cells).")
def verify(quiet: bool, as_json: bool, force: bool, out: str, **options: Any) -> None:
    """Verify robustness exactly (MILP) or certify a lower bound (CROWN/IBP) into a run directory."""
    from robench.commands import check_writable_dir, keep_only_finished
    from robench.config import config_from_cli
    from robench.validation import check
    from robench.verify_run import run_verify

    check_writable_dir(out)
    cfg = check(config_from_cli(options, VerifyRunConfig))
    with keep_only_finished(out):
        summary = run_verify(cfg, out, quiet=quiet or as_json, force=force)
    _echo_summary(summary, as_json)


# -- report / demo ---------------------------------------------------------------------

@cli.command(epilog=examples("robench report runs/mnist --out reports/mnist",
                             "robench report runs/gm runs/softmax runs/bb --out reports/all --json"))
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report directory.")
@json_option
def report(run_dirs, out: str, as_json: bool) -> None:
    """Build CSV/LaTeX tables, plots, a leaderboard and index.html from run directories."""
    from robench.commands import check_writable_dir, keep_only_finished, report_summary
    from robench.reports import build_report

    check_writable_dir(out)
    with keep_only_finished(out):
        index = build_report(list(run_dirs), out)
    if as_json:
        click.echo(json.dumps(report_summary(index), indent=2, sort_keys=True))
    else:
        click.echo(f"report written to {index}")


@cli.command(epilog=examples("robench demo", "robench demo --out /tmp/demo --device cpu"))
@click.option("--out", default="reports/demo", show_default=True, type=click.Path(file_okay=False))
@device_option
@quiet_option
def demo(out: str, device: str, quiet: bool) -> None:
    """Train softmax and GM on mnist5k, attack both, detect, and write a report."""
    from robench.demo import run_demo

    click.echo(run_demo(out, device=device, quiet=quiet))


if __name__ == "__main__":  # pragma: no cover
    main()
