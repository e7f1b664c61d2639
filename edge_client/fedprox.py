"""FedProx's proximal term (Li et al. 2020, "Federated Optimization in Heterogeneous Networks")."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch


def proximal_term(model: torch.nn.Module, global_params: Mapping[str, torch.Tensor], mu: float) -> torch.Tensor:
    """``mu / 2 * sum ||w - w_global||^2`` over the model's trainable parameters, to add to the local loss.

    ``global_params`` maps parameter names (as in ``named_parameters``) to the round's global values;
    it is treated as a constant, so gradients reach the model only. Move it to the model's device once,
    before training, rather than on every batch.
    """
    if mu < 0:
        raise ValueError("mu must be at least 0")
    terms = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name not in global_params:
            raise KeyError(f"the global parameters lack {name!r}")
        reference = global_params[name].detach().to(device=param.device, dtype=param.dtype)
        terms.append((param - reference).pow(2).sum())
    if not terms:
        return torch.zeros(())
    return (mu / 2) * torch.stack(terms).sum()


def proximal(model: torch.nn.Module, mu: float) -> Callable[[], torch.Tensor | float]:
    """The term to add to every step's loss in a round that starts from ``model``'s current weights:
    FedProx's ``mu/2 ||w - w_global||^2``, or a constant 0 when ``mu`` is 0 (plain FedAvg)."""
    if mu == 0:
        return lambda: 0.0
    start = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return lambda: proximal_term(model, start, mu)
