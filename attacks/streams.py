"""Row-aligned random streams: a row's random draws never depend on which other rows are computed.

The cascade attacks only the rows not yet won, restarts run on fewer rows, and
the multi-targeted passes on fewer still; each of them must give a row exactly
the noise it gets when every row is computed, or a point's example would depend
on its neighbours. :class:`RowStreams` (a base of every attack) draws for every
row of the call and indexes, from a generator seeded by (seed, call, sub-stream).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Tuple

import torch

_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)  # seed, call, stream


class RowStreams:
    """The random draws of an attack; expects ``seed``, ``device``, ``_calls``, ``_stream``,
    ``_generator``, ``_full`` (rows in the call) and ``_rows`` (those computed, or None: all)."""

    @property
    def generator(self) -> torch.Generator:
        """The attack's own random stream for the current call, seeded from (``seed``, call number, sub-stream).

        Consecutive batches get different noise, a rerun with the same seed and
        batches is identical, and what one call draws never depends on what an
        earlier call drew (a cascade may attack fewer rows of a batch).
        """
        if self._generator is None:
            mixed = (self.seed * _MIX[0] + self._calls * _MIX[1] + self._stream * _MIX[2]) % (1 << 63)
            self._generator = torch.Generator(device=self.device).manual_seed(mixed)
        return self._generator

    def _draw(self, kind: str, shape: Tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """Uniform [0, 1) (``kind="rand"``) or normal (``"randn"``) noise of ``shape``.

        Drawn for every row of the call and then indexed, so the rows being
        computed (all of them, or the cascade's still-robust ones) get the
        numbers they would get if every row were computed.
        """
        fn = torch.rand if kind == "rand" else torch.randn
        if self._rows is None or shape[0] == self._full:
            return fn(shape, generator=self.generator, device=like.device, dtype=like.dtype)
        full = fn((self._full, *shape[1:]), generator=self.generator, device=like.device, dtype=like.dtype)
        return full[self._rows]

    @contextlib.contextmanager
    def _subset(self, todo: torch.Tensor, stream: Optional[int] = None) -> Iterator[None]:
        """Compute only rows ``todo`` of the current ones, with the draws they get in a full computation.

        ``stream``: draw from that sub-stream of the call (each target pass has its
        own, so a row's draws never depend on how far another pass went).
        """
        saved = (self._rows, self._stream, self._generator)
        current = self._rows if self._rows is not None else torch.arange(self._full, device=todo.device)
        self._rows = current[todo]
        if stream is not None:
            self._stream, self._generator = stream, None
        try:
            yield
        finally:
            self._rows, self._stream, self._generator = saved
