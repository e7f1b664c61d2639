"""The adaptive server steps, registered as strategies: how the combined delta moves the global model.

FedAvg's plain ``x + lr * delta`` is in plain.py, shared by every strategy that names no step.
These are Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2, which treats the
combined delta as a pseudo-gradient:

    m = beta1 * m + (1 - beta1) * delta
    v = v + delta^2                                          FedAdagrad
    v = v - (1 - beta2) * delta^2 * sign(v - delta^2)        FedYogi
    v = beta2 * v + (1 - beta2) * delta^2                    FedAdam
    x = x + lr * m / (sqrt(v) + tau)

with m starting at 0 and v at tau^2, and no bias correction, as in the paper. Defaults: beta1 0.9
and beta2 0.99, the values the paper fixes; lr (its eta) 1e-2 and tau 1e-3, typical of the best
values its per-task grid search found (tau also bounds the step where v is tiny). m and v live in
the object, so they carry over from round to round (not across an aggregator restart).
"""

from __future__ import annotations

import torch

from ...schemas.codec import StateDict
from .base import Parts
from .mean import WeightedMean
from .options import DEFAULT_ADAPTIVE_LR, DEFAULT_BETA1, DEFAULT_BETA2, DEFAULT_TAU, StrategyOptions
from .tensors import STATISTICS


class Adaptive:
    """The shared part of FedAdagrad, FedYogi and FedAdam; subclasses say how v moves."""

    name = "adaptive"

    def __init__(self, lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.tau = tau
        self.m: StateDict = {}
        self.v: StateDict = {}

    def _second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self, params: StateDict, delta: StateDict) -> StateDict:
        out: StateDict = {}
        for name, p in params.items():
            d = delta[name].to(p.dtype)
            if name.endswith(STATISTICS):
                out[name] = p + d  # BatchNorm's running statistics are averaged, not optimised (a variance must stay >= 0)
                continue
            m, v = self.m.get(name), self.v.get(name)
            if m is None or m.shape != d.shape or m.dtype != d.dtype:
                m = self.m[name] = torch.zeros_like(d)
                v = self.v[name] = torch.full_like(d, self.tau ** 2)
            m.mul_(self.beta1).add_(d, alpha=1 - self.beta1)
            self._second_moment(v, d * d)
            out[name] = p + self.lr * m / (v.sqrt() + self.tau)
        return out


class FedAdagrad(Adaptive):
    name = "fedadagrad"

    def _second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> None:
        v.add_(squared)


class FedYogi(Adaptive):
    name = "fedyogi"

    def _second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> None:
        v.sub_((1 - self.beta2) * squared * torch.sign(v - squared))


class FedAdam(Adaptive):
    name = "fedadam"

    def _second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> None:
        v.mul_(self.beta2).add_(squared, alpha=1 - self.beta2)


def _adaptive(kind: type[Adaptive], o: StrategyOptions) -> Parts:
    return Parts(WeightedMean(), kind(
        lr=DEFAULT_ADAPTIVE_LR if o.server_lr is None else o.server_lr,
        beta1=DEFAULT_BETA1 if o.beta1 is None else o.beta1,
        beta2=DEFAULT_BETA2 if o.beta2 is None else o.beta2,
        tau=DEFAULT_TAU if o.tau is None else o.tau,
    ))


def fedadam(options: StrategyOptions) -> Parts:
    """``fedadam`` (registered in pyproject.toml): the mean delta as FedAdam's pseudo-gradient."""
    return _adaptive(FedAdam, options)


def fedyogi(options: StrategyOptions) -> Parts:
    """``fedyogi``."""
    return _adaptive(FedYogi, options)


def fedadagrad(options: StrategyOptions) -> Parts:
    """``fedadagrad``."""
    return _adaptive(FedAdagrad, options)
