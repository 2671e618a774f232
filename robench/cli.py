"""The ``robench`` command line. Each command is a thin wrapper over one function.

torch, ART and matplotlib are imported inside the commands that need them, so
``robench --help`` and ``robench list defenses`` start fast.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import click

from robench.errors import RobenchError, UsageError
from robench.registry import KINDS, registry


class Interrupted(Exception):
    """Ctrl-C inside a command (re-raised past Click, which would print a blank line first)."""


class CtrlC:
    """Remembers that Ctrl-C was pressed while a command ran.

    A library interrupted in the middle of an import can fail afterwards with an
    unrelated exception (AttributeError, RecursionError) instead of the
    KeyboardInterrupt; with this flag the command still ends as interrupted.
    """

    pressed = False
    done = False  # the command has returned; a late Ctrl-C changes nothing
    last = False  # the process ends after this command (console script, not CliRunner)

    def __enter__(self) -> "CtrlC":
        CtrlC.pressed, CtrlC.done, self.previous = False, False, None
        try:
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when ignored (nohup, &)
                self.previous = signal.signal(signal.SIGINT, self._pressed)
        except ValueError:  # signal handlers live in the main thread only
            pass
        return self

    @staticmethod
    def _pressed(signum: int, frame: Any) -> None:
        if CtrlC.done:
            return
        CtrlC.pressed = True
        raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        if self.previous is None:
            return
        # In the console script the process ends next: restoring Python's handler would let a
        # Ctrl-C during interpreter teardown kill a command whose work is complete (exit -2, no line).
        signal.signal(signal.SIGINT, signal.SIG_IGN if CtrlC.last else self.previous)


class RobenchGroup(click.Group):
    """Turns every user error into one line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted() from None

    def main(self, args: Optional[Sequence[str]] = None, prog_name: Optional[str] = None,
             complete_var: Optional[str] = None, standalone_mode: bool = True, **extra: Any) -> Any:
        with CtrlC():
            try:
                result = super().main(args=args, prog_name=prog_name or "robench", complete_var=complete_var,
                                      standalone_mode=False, **extra)
                CtrlC.done = True
                return result
            except click.exceptions.Exit as exc:
                sys.exit(exc.exit_code)
            except Exception as exc:
                _fail_for(exc)
            except KeyboardInterrupt:
                _fail_for(Interrupted())


def _fail_for(exc: BaseException) -> None:
    """Exit with one line for an error the user can cause; re-raise anything else (a bug)."""
    if CtrlC.pressed or isinstance(exc, (Interrupted, click.exceptions.Abort)):
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


@click.group(cls=RobenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="robench", prog_name="robench")
def cli() -> None:
    """Adversarial-robustness benchmarks for GM-loss and other feature-space defenses."""


def main() -> None:
    """The ``robench`` console script."""
    CtrlC.last = True
    try:
        cli()
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


def _batch_size(value: str):
    from robench.batching import parse_batch_size

    try:
        return parse_batch_size(value)
    except RobenchError as exc:
        raise click.BadParameter(str(exc).replace("--batch-size must be", "must be")) from None


# -- shared option bundles ---------------------------------------------------------

def device_option(f):
    return click.option("--device", default="auto", show_default=True,
                        help="auto, cpu or cuda.")(f)


def seed_option(f):
    return click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")(f)


def quiet_option(f):
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars.")(f)


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


@cli.command("list")
@click.argument("kind", required=False, type=NameChoice(KINDS))
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
@click.option("--batch-size", default="250", show_default=True, metavar="N|auto",
              callback=lambda c, p, v: _batch_size(v),
              help="Points per attack batch, or auto: the largest that fits (GPU memory, or a CPU memory "
                   "cap: ROBENCH_CPU_MEMORY_GB, default a quarter of the free memory).")
@seed_option
@device_option
@quiet_option
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where cells run: this process, or Ray tasks.")
@click.option("--ray-address", default=None, help="Address of an existing Ray cluster (default: start one).")
@click.option("--cascade", is_flag=True,
              help="Worst-case robust accuracy at a fraction of the passes: each further attack (and "
                   "restart) runs only on the points still robust. Fewer adversarial examples for detection.")
@click.option("--amp", type=click.Choice(["bf16"]), default=None,
              help="Attack forward passes under bfloat16 autocast (evaluation stays fp32; the sanity "
                   "report checks robust accuracy against fp32).")
@click.option("--compile", "compile_", is_flag=True, help="Attack forward passes through torch.compile.")
@click.option("--force", is_flag=True, help="Overwrite a run directory made with another configuration.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory.")
def attack(models, attacks, eps, threats, surrogate, detectors, dataset, arch, n, batch_size, seed, device,
           executor, ray_address, cascade, amp, compile_, quiet, force, out) -> None:
    """Attack checkpoints under a threat model and write a run directory."""
    from robench.commands import check_writable_dir, keep_only_finished
    from robench.runner import AttackConfig, run_attack

    check_writable_dir(out)
    if arch:
        registry("archs").entry(arch)  # an unknown name fails now, not after the data is loaded
    cfg = AttackConfig(models=list(models), attacks=list(attacks), eps=list(eps), threats=list(threats),
                       surrogate=surrogate, detectors=list(detectors), dataset=dataset, arch=arch, n=n,
                       batch_size=batch_size, seed=seed, device=device, executor=executor,
                       ray_address=ray_address, cascade=cascade, amp=amp, compile=compile_)
    with keep_only_finished(out):
        summary = run_attack(cfg, out, quiet=quiet, force=force)
    click.echo(summary)


# -- run --------------------------------------------------------------------------------

@cli.command("run")
@click.argument("suite")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Run directory (default: the suite's).")
@click.option("--n", type=int, default=None, help="Override the suite's n.")
@click.option("--batch-size", default=None, metavar="N|auto",
              callback=lambda c, p, v: None if v is None else _batch_size(v),
              help="Override the suite's batch size (an integer or auto).")
@click.option("--seed", type=int, default=None, help="Override the suite's seed.")
@click.option("--device", default=None, help="Override the suite's device.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None, help="Override the executor.")
@click.option("--ray-address", default=None, help="Address of an existing Ray cluster.")
@click.option("--cascade/--no-cascade", default=None, help="Override the suite's cascade.")
@quiet_option
@click.option("--force", is_flag=True, help="Overwrite a run directory made with another configuration.")
def run_cmd(suite: str, out, n, batch_size, seed, device, executor, ray_address, cascade, quiet: bool,
            force: bool) -> None:
    """Run the whole grid a SUITE.yaml describes (finished cells are reused)."""
    from robench.commands import check_writable_dir, keep_only_finished, suite_out
    from robench.suite import run_suite

    overrides = {"n": n, "batch_size": batch_size, "seed": seed, "device": device, "executor": executor,
                 "ray_address": ray_address, "cascade": cascade}
    out_dir = suite_out(suite, out)
    if out_dir:
        check_writable_dir(out_dir)
    with keep_only_finished(out_dir):
        click.echo(run_suite(suite, out=out, overrides=overrides, quiet=quiet, force=force))


# -- report / demo ---------------------------------------------------------------------

@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report directory.")
def report(run_dirs, out: str) -> None:
    """Build CSV tables, plots and index.html from run directories."""
    from robench.commands import check_writable_dir, keep_only_finished
    from robench.reports import build_report

    check_writable_dir(out)
    with keep_only_finished(out):
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
