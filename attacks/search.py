"""Per-sample search strategies shared by the gradient attacks: restarts, targets, best-so-far.

Every strategy keeps, per sample, the worst case for the defender
(:class:`BestSoFar`): a won example (misclassified; for the joint objective
also unflagged) beats one that is not, and among equals the higher objective
wins. They run inside :class:`~robench.attacks.base.GradientAttack`, whose
subclasses implement :meth:`Search._attack` (one run, restarts included).
"""

from __future__ import annotations

from typing import Callable, ClassVar, Optional, Tuple

import torch

Attempt = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class BestSoFar:
    """Per sample, the best example seen so far and its objective and won flag."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x.detach().clone()
        self.loss = torch.full((len(x),), float("-inf"), device=x.device)
        self.won = torch.zeros(len(x), dtype=torch.bool, device=x.device)

    def update(self, x: torch.Tensor, loss: torch.Tensor, won: torch.Tensor,
               rows: Optional[torch.Tensor] = None) -> None:
        """Offer candidates for all rows, or for ``rows`` only; ties keep the earlier example."""
        old_loss, old_won = (self.loss, self.won) if rows is None else (self.loss[rows], self.won[rows])
        loss = loss.detach().float()
        better = (won & ~old_won) | ((won == old_won) & (loss > old_loss))
        if rows is None:
            self.x = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x.detach(), self.x)
            self.loss = torch.where(better, loss, self.loss)
            self.won = self.won | won
            return
        pick = rows[better]
        self.x[pick] = x.detach()[better]
        self.loss[pick] = loss[better]
        self.won[pick] = won[better]


class Search:
    """Restarts, multi-targeted passes and best-so-far tracking over steps (a mixin of GradientAttack)."""

    tracks_itself: ClassVar[bool] = False  # the attack keeps its own best-so-far over steps (APGD)

    def _attack(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One run of the attack on ``x`` (restarts included); ``y`` is (N,) or (N, 2) targeted."""
        raise NotImplementedError

    def _run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._attack(x, y) if self.targets is None else self._multi_targeted(x, y)

    def _multi_targeted(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One run per target among the ``targets`` highest other classes by clean logit.

        A later target runs only on the rows no earlier one won (a won row keeps
        its first success), so the cost is bounded and the result never weaker
        than the first target's; each pass draws from its own sub-stream.
        """
        with torch.no_grad():
            clean = self._forward(x).detach()
        self.n_forward += len(x)
        others = clean.scatter(1, y.unsqueeze(1), float("-inf"))
        count = min(self.targets, clean.shape[1] - 1)  # a model without num_classes was not checked
        ranked = others.sort(dim=1, descending=True, stable=True).indices[:, :count]
        best = BestSoFar(x)
        for k in range(count):
            todo = (~best.won).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            aimed = torch.stack([y[todo], ranked[todo, k]], dim=1)
            with self._subset(todo, stream=k):
                candidate = self._attack(x[todo], aimed).detach()
            best.update(candidate, *self._judge(candidate, aimed), rows=todo)
        return best.x

    def _best_of(self, attempt: Attempt, x: torch.Tensor, y: torch.Tensor, restarts: int) -> torch.Tensor:
        """Run ``attempt`` ``restarts`` times and keep, per sample, the worst case for the defender.

        The objective and its goal decide (not only a prediction), so it works for
        every objective, including ``joint``; a single untracked attempt costs no
        extra pass. With ``cascade`` a restart runs only on the rows not yet won
        (AutoAttack's cascade), and a won row keeps the example that won it.
        """
        if restarts == 1 and not self._tracks_steps():
            return attempt(x, y).detach()
        best = BestSoFar(x)
        best.update(*self._judged(attempt, x, y))
        for _ in range(restarts - 1):
            if not self.cascade:
                best.update(*self._judged(attempt, x, y))
                continue
            todo = (~best.won).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            with self._subset(todo):
                candidate, loss, won = self._judged(attempt, x[todo], y[todo])
            best.update(candidate, loss, won, rows=todo)
        return best.x

    def _tracks_steps(self) -> bool:
        """Selective / orthogonal steps wander between goals, so their best step is kept."""
        return self.update != "joint" and not self.tracks_itself

    def _judged(self, attempt: Attempt, x: torch.Tensor,
                y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(example, objective, won) of one attempt: its end point, or its best step when tracked."""
        tracker = BestSoFar(x) if self._tracks_steps() else None
        self._tracker = tracker
        try:
            final = attempt(x, y).detach()
        finally:
            self._tracker = None
        loss, won = self._judge(final, y)
        if tracker is None:
            return final, loss, won
        tracker.update(final, loss, won)
        return tracker.x, tracker.loss, tracker.won
