"""Adding a callback's loss term to the training loss, with one backward pass per step.

Lightning calls ``trainer.strategy.training_step`` for every training batch and hands its output
to the automatic-optimization closure. That closure divides the loss by
``accumulate_grad_batches``, the precision plugin scales it for AMP (GradScaler under
``16-mixed``) and calls ``backward`` once. lightning-sync wraps the strategy's ``training_step``
for the duration of ``fit`` and adds the registered terms to the loss it returns, so the terms
pass through the same division, scaling and single backward as the user's loss. The
LightningModule itself is never modified.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
from torch import Tensor

log = logging.getLogger(__name__)

LossTerm = Callable[[], "Tensor | None"]
"""A function returning the term to add for the current step, or ``None`` to add nothing."""

_ATTRIBUTE = "_lightning_sync_loss_terms"


class _TrainingStepWithLossTerms:
    """Replacement for ``strategy.training_step`` that adds the registered loss terms."""

    def __init__(self, strategy: pl.strategies.Strategy) -> None:
        self.strategy = strategy
        self.original = strategy.__dict__.get("training_step")
        self.terms: dict[str, LossTerm] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.original is not None:
            output = self.original(*args, **kwargs)
        else:
            output = type(self.strategy).training_step(self.strategy, *args, **kwargs)
        if output is None:
            # A `None` output skips the optimizer step in Lightning, so nothing is added.
            return output
        extra = self.total()
        if extra is None:
            return output
        return add_to_step_output(output, extra)

    def total(self) -> Tensor | None:
        total: Tensor | None = None
        for term in self.terms.values():
            value = term()
            if value is not None:
                total = value if total is None else total + value
        return total


def add_to_step_output(output: Any, extra: Tensor) -> Any:
    """Return ``output`` of a ``training_step`` with ``extra`` added to its loss.

    Raises:
        TypeError: if ``output`` is neither a tensor nor a mapping with a ``"loss"`` entry.
    """
    if isinstance(output, Tensor):
        return output + extra.to(output.dtype)
    if isinstance(output, Mapping) and isinstance(output.get("loss"), Tensor):
        updated = dict(output)
        updated["loss"] = output["loss"] + extra.to(output["loss"].dtype)
        return updated
    raise TypeError(
        f"training_step returned {type(output).__name__}, so lightning-sync cannot add its loss term."
        " Return the loss tensor or a dict with a 'loss' entry."
    )


def require_automatic_optimization(pl_module: pl.LightningModule, callback: str) -> None:
    """Raise if ``pl_module`` uses manual optimization, where no single loss can be extended.

    Raises:
        RuntimeError: naming the callback and the fix.
    """
    if not pl_module.automatic_optimization:
        raise RuntimeError(
            f"{callback} adds a term to the loss returned by training_step, but {type(pl_module).__name__} sets"
            " `automatic_optimization = False`, so Lightning never sees that loss. Use automatic optimization,"
            f" or remove {callback} and add the penalty from `lightning_sync.functional` to your own loss."
        )


def register_loss_term(trainer: pl.Trainer, key: str, term: LossTerm) -> None:
    """Add ``term`` to every training loss of ``trainer`` until :func:`unregister_loss_term`.

    Raises:
        ValueError: if ``key`` is already registered (two callbacks with the same state key).
    """
    strategy = trainer.strategy
    wrapper = strategy.__dict__.get(_ATTRIBUTE)
    if wrapper is None:
        wrapper = _TrainingStepWithLossTerms(strategy)
        setattr(strategy, _ATTRIBUTE, wrapper)
        strategy.training_step = wrapper  # type: ignore[method-assign]
    if key in wrapper.terms:
        raise ValueError(f"A loss term named {key!r} is already registered. Give each callback a distinct `state_key`.")
    wrapper.terms[key] = term


def unregister_loss_term(trainer: pl.Trainer, key: str) -> None:
    """Remove the term ``key``; the strategy gets its own ``training_step`` back after the last one."""
    strategy = trainer.strategy
    wrapper = strategy.__dict__.get(_ATTRIBUTE)
    if wrapper is None:
        return
    wrapper.terms.pop(key, None)
    if not wrapper.terms:
        if wrapper.original is not None:
            strategy.training_step = wrapper.original  # type: ignore[method-assign]
        else:
            del strategy.__dict__["training_step"]
        delattr(strategy, _ATTRIBUTE)
