"""Carlini-Wagner L2: minimal-L2 adversarial examples via tanh box, Adam and a binary search on c."""

from __future__ import annotations

import math
from typing import ClassVar, Dict, Optional

import torch

from robench.attacks.base import Attack
from robench.attacks.objectives import true_and_best_other
from robench.attacks.runtime import PLAIN, Runtime
from robench.params import Range, check_number

_NO_UPPER = 1e10  # "no successful c yet" in the binary search


class CWL2(Attack):
    r"""CW-L2 in the paper 'Towards Evaluating the Robustness of Neural Networks'
    [https://arxiv.org/abs/1608.04644]

    Distance Measure: L2 (minimal-perturbation; unbounded unless ``eps`` > 0)

    Minimises ``||x' - x||_2^2 + c * max(z_y - max_{j != y} z_j + confidence, 0)``
    over ``x' = (tanh(w) + 1) / 2`` (always inside [0, 1]) with Adam, per sample:
    ``c`` starts at ``initial_const`` and is binary-searched (x10 while no
    example is found, then bisected). Each sample keeps its smallest-L2
    successful example across all steps and rounds, and stops optimising in a
    round once its loss stalls (checked every ``max(steps // 10, 10)`` steps; stalled
    samples are dropped from the batch, so aborting saves real work).
    Samples never fooled are returned unchanged.

    Arguments:
        model (RobustModel): model to attack (inputs in [0, 1]).
        eps (float or None): None or <= 0: unbounded (``self.eps`` is None and only
            [0, 1] is verified). > 0: an L2 budget; examples found beyond it are
            shrunk onto the ball (the caller recomputes whether they still fool).
            (Default: None)
        binary_search_steps (int): rounds of the search on c. (Default: 9)
        steps (int): Adam iterations per round. (Default: 100)
        lr (float): Adam learning rate in tanh space. (Default: 0.1; the paper's
            0.01 needs its 10,000 iterations to move saturated pixels)
        confidence (float): kappa, the logit margin required. (Default: 0)
        initial_const (float): first c, in (0, 1e10). (Default: 0.1)
        abort_early (bool): per-sample early abort on stalled loss. (Default: True)
        seed (int): recorded only; CW-L2 is deterministic. (Default: 0)
        runtime (Runtime): amp / compile / cascade. (Default: none of them)

    Shape:
        - x: (N, C, H, W) in [0, 1]; y: (N,) labels; output: (N, C, H, W).

    Examples::
        >>> attack = CWL2(model, eps=None, binary_search_steps=9, steps=100)
        >>> x_adv = attack(x, y)
    """

    name = "cw-l2"
    norm = "L2"
    ranges: ClassVar[Dict[str, Range]] = {
        **Attack.ranges, "binary_search_steps": Range(int, 1), "steps": Range(int, 1),
        "lr": Range(float, 0.0, low_open=True), "confidence": Range(float, 0.0),
        # c must stay below the search's "no successful c yet" marker, or the search cannot bisect.
        "initial_const": Range(float, 0.0, _NO_UPPER, low_open=True, high_open=True)}

    def __init__(self, model: torch.nn.Module, eps: Optional[float] = None,
                 binary_search_steps: int = 9, steps: int = 100, lr: float = 0.1,
                 confidence: float = 0.0, initial_const: float = 0.1, abort_early: bool = True,
                 seed: int = 0, runtime: Runtime = PLAIN) -> None:
        if eps is not None:  # any finite number: <= 0 means unbounded, > 0 is checked as an L2 budget
            eps = check_number(self.name, "eps", eps)
        super().__init__(model, eps if eps is not None and eps > 0 else None, seed, runtime)
        self.objective = "margin"
        self.params["objective"] = "margin"
        self._set(binary_search_steps=binary_search_steps, steps=steps, lr=lr, confidence=confidence,
                  initial_const=initial_const, abort_early=abort_early)

    def _run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = len(x)
        const = x.new_full((n,), self.initial_const)
        lower, upper = torch.zeros_like(const), torch.full_like(const, _NO_UPPER)
        best_l2 = torch.full_like(const, math.inf)
        best_adv = x.clone()
        # Shrunk by 1 - 1e-6 so atanh stays finite at pixels that are exactly 0 or 1.
        w_start = torch.atanh((2 * x - 1) * (1 - 1e-6))
        for _ in range(self.binary_search_steps):
            found = self._round(x, y, w_start, const, best_l2, best_adv)
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper < _NO_UPPER, (lower + upper) / 2, const * 10)
        if self.eps is not None:
            delta = best_adv - x
            norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            scale = (self.eps / norms).clamp(max=1.0).view(-1, *[1] * (x.dim() - 1))
            best_adv = x + delta * scale  # a convex combination of x and x': still in [0, 1]
        return best_adv

    def _round(self, x: torch.Tensor, y: torch.Tensor, w_start: torch.Tensor, const: torch.Tensor,
               best_l2: torch.Tensor, best_adv: torch.Tensor) -> torch.Tensor:
        """One Adam run at fixed c, updating ``best_l2`` / ``best_adv`` in place.

        Works on the still-active samples only (``idx`` into the batch).

        Returns:
            (N,) bool: which samples had a successful example in this round.
        """
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        idx = torch.arange(len(x), device=x.device)
        w, xs, ys, cs = w_start.clone(), x, y, const
        m, v = torch.zeros_like(w), torch.zeros_like(w)
        prev = torch.full_like(const, math.inf)
        # No abort decision on fewer than 10 steps of evidence: the first Adam steps
        # raise the L2 term before the margin term falls, which looks like a stall.
        check_every = max(self.steps // 10, 10)
        shape = (-1,) + (1,) * (x.dim() - 1)
        for step in range(1, self.steps + 1):
            w.requires_grad_(True)
            x_adv = (torch.tanh(w) + 1) / 2
            logits = self._forward(x_adv)
            l2 = (x_adv - xs).flatten(1).pow(2).sum(dim=1)
            true, other = true_and_best_other(logits, ys)
            loss = l2 + cs * (true - other + self.confidence).clamp_min(0.0)
            (grad,) = torch.autograd.grad(loss.sum(), w)
            self.n_forward += len(w)
            self.n_backward += len(w)
            with torch.no_grad():
                # Record the point just evaluated (index_copy, not masks: no host syncs).
                success = other - true > self.confidence
                old_l2 = best_l2.index_select(0, idx)
                better = success & (l2 < old_l2)
                best_l2.index_copy_(0, idx, torch.where(better, l2, old_l2))
                best_adv.index_copy_(0, idx, torch.where(better.view(shape), x_adv,
                                                         best_adv.index_select(0, idx)))
                found.index_copy_(0, idx, found.index_select(0, idx) | success)
                w = self._adam(w.detach(), grad, m, v, step)
                if self.abort_early and step % check_every == 0:
                    keep = loss.detach() <= 0.9999 * prev
                    prev = loss.detach()
                    if not bool(keep.all()):  # one sync per check, not per step
                        if not bool(keep.any()):
                            break
                        idx, w, m, v, xs, ys, cs, prev = (
                            t[keep] for t in (idx, w, m, v, xs, ys, cs, prev))
        return found

    def _adam(self, w: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
              step: int, beta1: float = 0.9, beta2: float = 0.999) -> torch.Tensor:
        """One Adam step in place (written out so its state can be compacted with the batch)."""
        m.mul_(beta1).add_(grad, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (v / (1 - beta2 ** step)).sqrt_().add_(1e-8)
        return w.addcdiv_(m, denom, value=-self.lr / (1 - beta1 ** step))
