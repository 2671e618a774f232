"""The gradient-masking sanity report: checks AutoAttack and ART know, and more.

Each check yields (model, check, flagged, evidence). A flag is a reason to
distrust a robustness number, with the evidence that raised it.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import pandas as pd
import torch
import torch.nn.functional as F

ITERATIVE = ("pgd", "pgd-l2", "bim", "mim")
SINGLE_STEP = {"fgsm": ("Linf", ("pgd", "bim", "mim"))}
PROBE_N = 100  # points used by the checks that run the model themselves


def _row(model: str, check: str, flagged: bool, evidence: str) -> Dict[str, object]:
    return {"model": model, "check": check, "flagged": bool(flagged), "evidence": evidence}


def check_results(results: pd.DataFrame) -> List[Dict[str, object]]:
    """Checks that need only the results table."""
    from robench.worstcase import worst_case_checks

    rows: List[Dict[str, object]] = []
    for model, df in results.groupby("model", sort=True):
        rows.append(_monotone(model, df))
        rows.append(_single_step(model, df))
        rows.append(_threat_order(model, df))
    return rows + worst_case_checks(results) + verification_checks(results)


def verification_checks(results: pd.DataFrame) -> List[Dict[str, object]]:
    """Per model with verify cells: points every attack missed but verification broke, and attack
    successes on points proven robust (see robench.gap)."""
    if "missed" not in results and "missed_det_fpr5" not in results:
        return []
    rows = []
    worst = results[results["attack"] == "worst-case"]
    for model, df in worst.groupby("model", sort=True):
        strongest = df[df["threat"] == "white-box"] if (df["threat"] == "white-box").any() else df
        bad = []
        for suffix, label in (("", "robust"), ("_det_fpr5", "detection-aware robust (5% FPR)")):
            for _, r in strongest.iterrows():
                missed = r.get(f"missed{suffix}")
                if pd.notna(missed) and missed > 0:
                    bad.append(f"{int(missed)} point(s) proven not {label} at eps {r['eps']:g} that every "
                               f"{r['threat']} attack missed ({r['detector']})")
            for _, r in df.iterrows():
                wrong = r.get(f"contradicted{suffix}")
                if pd.notna(wrong) and wrong > 0:
                    bad.append(f"{int(wrong)} attack success(es) on points proven {label} at eps {r['eps']:g} "
                               f"({r['threat']}, {r['detector']}): a bug in the attack or the verifier")
        checked = int(df[[c for c in ("missed", "missed_det_fpr5") if c in df]].notna().sum().sum())
        if checked:
            rows.append(_row(model, "attacks miss no point verification proves breakable", bool(bad),
                             "; ".join(bad) or f"{checked} worst-case comparisons with exact verification"))
    return rows


def _monotone(model: str, df: pd.DataFrame) -> Dict[str, object]:
    bad = []
    it = df[df["attack"].isin(ITERATIVE)]
    for (attack, threat, det), g in it.groupby(["attack", "threat", "detector"], sort=True):
        acc = g.sort_values("eps")[["eps", "robust_acc"]].drop_duplicates("eps")
        tol = 1.0 / max(1, int(g["n"].max()))
        for (e0, a0), (e1, a1) in zip(acc.values[:-1], acc.values[1:]):
            if a1 > a0 + tol:
                bad.append(f"{attack} {threat}: {a0:.3f} at eps {e0:g} < {a1:.3f} at eps {e1:g}")
    return _row(model, "robust accuracy non-increasing in eps", bool(bad),
                "; ".join(bad) or f"{len(it)} iterative rows checked")


def _single_step(model: str, df: pd.DataFrame) -> Dict[str, object]:
    bad = []
    # Only where the attacker has the target's gradients: single-step examples
    # often transfer better than iterative ones, so black-box rows are no evidence.
    df = df[df["threat"] != "black-box"]
    for single, (_, iterative) in SINGLE_STEP.items():
        s = df[df["attack"] == single]
        for _, r in s.iterrows():
            same = df[df["attack"].isin(iterative) & (df["eps"] == r["eps"]) & (df["threat"] == r["threat"])
                      & (df["detector"] == r["detector"])]
            for _, q in same.iterrows():
                if r["robust_acc"] + 1.0 / max(1, r["n"]) < q["robust_acc"]:
                    bad.append(f"{single} {r['robust_acc']:.3f} < {q['attack']} {q['robust_acc']:.3f} "
                               f"at eps {r['eps']:g} {r['threat']}")
    return _row(model, "single-step attack no stronger than iterative", bool(bad),
                "; ".join(sorted(set(bad))) or "no single-step attack beats an iterative one")


def _threat_order(model: str, df: pd.DataFrame) -> Dict[str, object]:
    bad = []
    keys = ["attack", "attack_params", "eps", "detector"]
    wb = df[df["threat"] == "white-box"].set_index(keys)["robust_acc"]
    for threat in ("gray-box", "black-box"):
        other = df[df["threat"] == threat].set_index(keys)["robust_acc"]
        for key in wb.index.intersection(other.index):
            tol = 1.0 / max(1, int(df["n"].max()))
            if other[key] + tol < wb[key]:
                bad.append(f"{threat} {other[key]:.3f} < white-box {wb[key]:.3f} for {key[0]} eps {key[2]:g}")
    return _row(model, "white-box at least as strong as gray- and black-box", bool(bad),
                "; ".join(bad) or f"{len(wb)} white-box cells compared")


def check_model(model, x: torch.Tensor, y: torch.Tensor, attack_acc: Dict[str, Tuple[float, float]],
                seed: int = 0, batch_size: int = 256, eot: int = 1) -> List[Dict[str, object]]:
    """Checks that run the model: gradients, their noise, determinism, eps = 1, random noise.

    Args:
        attack_acc: per norm ("Linf", "L2"), (eps, lowest robust accuracy of any
            attack at that eps): the largest budget the run attacked with.
        eot: the largest ``eot`` any attack of the run used on this model.
    """
    name = model.info.name
    x, y = x.to(model.device), y.to(model.device)
    probe_x, probe_y = x[:PROBE_N], y[:PROBE_N]
    rows = [_gradients(name, model, probe_x, probe_y), _gradient_noise(name, model, probe_x, probe_y, eot),
            _determinism(name, model, probe_x), _unbounded(name, model, probe_x, probe_y, seed)]
    rows.insert(0, _near_chance(name, model, x, y, batch_size))
    for norm in sorted(attack_acc) or ["Linf"]:
        eps, acc = attack_acc.get(norm, (0.0, None))
        rows.append(_noise(name, model, x, y, norm, eps, acc, seed, batch_size))
    return rows


@torch.no_grad()
def _near_chance(name: str, model, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 min_n: int = 30) -> Dict[str, object]:
    """A model that never learned the task: its training metrics say so, or it is near chance on the run's points.

    The run's points count only from ``min_n`` of them: on fewer, one or two
    mistakes move the accuracy across 2x chance.
    """
    from robench.training import weak_model_warning

    warning = weak_model_warning(model)
    pred = torch.cat([model(xb).argmax(1) for xb in x.split(batch_size)])
    acc = float((pred == y).float().mean())
    floor = 2.0 / model.num_classes
    evidence = f"clean accuracy {acc:.3f} on {len(y)} points (2x chance {floor:.3f})"
    return _row(name, "clean accuracy above 2x chance", warning is not None or (len(y) >= min_n and acc < floor),
                f"{evidence}; {warning}" if warning else evidence)


def _gradients(name: str, model, x: torch.Tensor, y: torch.Tensor) -> Dict[str, object]:
    xg = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(xg), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, xg)
    flat = grad.flatten(1)
    zero = (flat.abs().amax(1) == 0) | ~torch.isfinite(flat).all(1)
    frac = float(zero.float().mean())
    return _row(name, "input gradients non-zero and finite", frac > 0.01,
                f"{frac:.1%} of {len(x)} samples have zero or NaN input gradients")


GRADIENT_SPREAD = 0.05  # relative variance of input gradients above which a model counts as randomised
SPREAD_PROBE = 16


def _gradient_noise(name: str, model, x: torch.Tensor, y: torch.Tensor, eot: int) -> Dict[str, object]:
    """A randomised model needs EoT: one-draw gradients of it point in a noisy direction."""
    from robench.attacks.eot import gradient_spread

    spread = gradient_spread(model, x[:SPREAD_PROBE], y[:SPREAD_PROBE], draws=4)
    noisy = spread > GRADIENT_SPREAD
    return _row(name, "input gradients deterministic, or attacked with EoT", noisy and eot < 2,
                f"relative gradient variance over 4 draws {spread:.3g} (threshold {GRADIENT_SPREAD:g}); "
                f"largest eot used: {eot}" + ("; randomised: attack with eot=N (N >= 8)" if noisy and eot < 2
                                              else ""))


@torch.no_grad()
def _determinism(name: str, model, x: torch.Tensor) -> Dict[str, object]:
    a, b = model(x), model(x)
    single = torch.cat([model(x[i:i + 1]) for i in range(min(len(x), 16))])
    d_repeat = float((a - b).abs().max())
    d_batch = float((a[:len(single)] - single).abs().max())
    scale = float(a.abs().max()) + 1e-12
    flagged = d_repeat > 1e-5 * scale or d_batch > 1e-4 * scale
    return _row(name, "deterministic forward pass", flagged,
                f"max diff between two passes {d_repeat:.2e}, batch vs single {d_batch:.2e} (logit scale {scale:.2g})")


def _unbounded(name: str, model, x: torch.Tensor, y: torch.Tensor, seed: int) -> Dict[str, object]:
    from robench.attacks import create_attack

    attack = create_attack("pgd", model, eps=1.0, steps=20, objective="margin", seed=seed)
    with torch.no_grad():
        acc = float((model(attack(x, y)).argmax(1) == y).float().mean())
    chance = 1.0 / model.num_classes
    return _row(name, "unbounded attack (eps = 1) reaches chance", acc > chance + 0.05,
                f"PGD-20 margin at eps 1: accuracy {acc:.3f} (chance {chance:.3f})")


@torch.no_grad()
def _noise(name: str, model, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float,
           attack_acc: Optional[float], seed: int, batch_size: int) -> Dict[str, object]:
    check = f"attack beats random noise ({norm})"
    if attack_acc is None or eps <= 0:
        return _row(name, check, False, f"no {norm} attack with eps > 0 to compare")
    x_noisy = (x + eps * random_direction(x, norm, seed)).clamp(0, 1)
    pred = torch.cat([model(xb).argmax(1) for xb in x_noisy.split(batch_size)])
    noise_acc = float((pred == y).float().mean())
    # An attack that leaves nothing standing cannot be beaten, so 0 vs 0 is no evidence.
    flagged = attack_acc > 0 and noise_acc <= attack_acc + 1e-9
    kind = "random sign" if norm == "Linf" else "random Gaussian direction"
    return _row(name, check, flagged,
                f"{kind} noise at {norm} eps {eps:g}: accuracy {noise_acc:.3f}; "
                f"best attack: {attack_acc:.3f} ({len(y)} points)")


def random_direction(x: torch.Tensor, norm: str, seed: int) -> torch.Tensor:
    """Per sample, a random perturbation of norm 1 ("Linf": a random corner; "L2": a random direction)."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    if norm == "Linf":
        return torch.randint(0, 2, x.shape, generator=gen, device=x.device).to(x.dtype) * 2 - 1
    d = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))


NOISE_NORMS = ("Linf", "L2")


def largest_eot(results: pd.DataFrame, model: str) -> int:
    """The largest ``eot=N`` in the attack parameters of ``model``'s rows (1 when none)."""
    import re

    if not len(results) or "attack_params" not in results:
        return 1
    params = results.loc[results["model"] == model, "attack_params"].astype(str)
    found = [int(m) for text in params for m in re.findall(r"(?:^|[,;:])eot=(\d+)", text)]
    return max(found, default=1)


def strongest_attacks(results: pd.DataFrame, model: str) -> Dict[str, Tuple[float, float]]:
    """Per norm, (largest eps > 0, lowest robust accuracy at it) of ``model``'s rows."""
    out: Dict[str, Tuple[float, float]] = {}
    if not len(results):
        return out
    rows = results[(results["model"] == model) & (results["eps"] > 0)]
    for norm in NOISE_NORMS:
        by_norm = rows[rows["norm"] == norm]
        if len(by_norm):
            eps = float(by_norm["eps"].max())
            out[norm] = (eps, float(by_norm[by_norm["eps"] == eps]["robust_acc"].min()))
    return out


def sanity_report(results: pd.DataFrame, contexts: Dict[str, object], seed: int = 0,
                  batch_size: int = 256, extra: Optional[List[Dict[str, object]]] = None) -> pd.DataFrame:
    """All checks for every model of a run; ``contexts`` maps model name -> (model, x, y).

    ``extra``: rows of checks the runner made itself (bf16 autocast against fp32).
    """
    rows = check_results(results) if len(results) else []
    for name, (model, x, y) in sorted(contexts.items()):
        rows += check_model(model, x, y, strongest_attacks(results, name), seed, batch_size, largest_eot(results, name))
        rows += [r for r in extra or [] if r["model"] == name]
    report = pd.DataFrame(rows, columns=["model", "check", "flagged", "evidence"])
    return report.sort_values("model", kind="stable").reset_index(drop=True)  # each model's checks together


def run_sanity(run, cfg, contexts: Dict[str, object]) -> pd.DataFrame:
    """Every check for a finished run, written to its sanity.csv; ``contexts``: path -> ModelContext."""
    extra = amp_checks(cfg, contexts) if cfg.amp else []
    named = {c.name: (c.model, c.x, c.y) for c in contexts.values()}
    report = sanity_report(run.results(), named, seed=cfg.seed, batch_size=cfg.batch_size, extra=extra)
    run.write_sanity(report)
    return report


def amp_checks(cfg, contexts: Dict[str, object]) -> List[Dict[str, object]]:
    """Per model, the first planned attack with eps > 0 that runs under autocast, crafted in fp32 and bf16."""
    from robench.evaluate import amp_agreement
    from robench.plan import cells_of, plan_cells

    rows = []
    for ctx in contexts.values():
        cells = [c for job in plan_cells(cfg, ctx.plan_key()) for c in cells_of(job)]
        cells = [c for c in cells if c.eps > 0 and _runs_under_amp(c.attack)]
        if cells:
            rows.append(amp_agreement(cells[0], ctx, cfg))
    return rows


def _runs_under_amp(attack: str) -> bool:
    from robench.attacks import supports

    return supports(attack, "amp")
