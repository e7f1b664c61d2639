from __future__ import annotations

import pytest
import torch
from fedmq.edge_client.fedprox import proximal_term


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    model[1].bias.requires_grad_(False)
    return model


def test_proximal_term_is_half_mu_times_the_squared_distance_over_trainable_params() -> None:
    model = _model()
    global_params = {name: p.detach() + 0.5 for name, p in model.named_parameters()}
    term = proximal_term(model, global_params, mu=0.2)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert term.item() == pytest.approx(0.2 / 2 * trainable * 0.25)


def test_its_gradient_pulls_towards_the_global_model() -> None:
    model = _model()
    global_params = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    proximal_term(model, global_params, mu=0.3).backward()
    weight = model[0].weight
    assert torch.allclose(weight.grad, 0.3 * weight.detach())
    assert all(p.grad is None for p in global_params.values())


def test_zero_at_the_global_model_and_for_mu_zero() -> None:
    model = _model()
    same = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert proximal_term(model, same, mu=1.0).item() == 0.0
    assert proximal_term(model, {k: v + 1 for k, v in same.items()}, mu=0.0).item() == 0.0
    with pytest.raises(ValueError):
        proximal_term(model, same, mu=-1.0)


def test_a_large_mu_keeps_local_training_near_the_global_model(tmp_path) -> None:
    from fedmq.edge_client.classification import ClassificationTask
    from fedmq.edge_client.context import make_context
    from fedmq.edge_client.data.synth_classification import synth_classification
    from fedmq.schemas import JobSpec

    [folder] = synth_classification(tmp_path, silos=1, train_per_silo=64, test_per_silo=4)
    drift = {}
    for mu in (0.0, 10.0):
        task = ClassificationTask(folder)
        spec = JobSpec(job="j", run_id="r", status="running", model="cnn", labels=task.labels, rounds=1,
                       min_clients=1, local_epochs=2, batch_size=16, lr=0.05, seed=0, codec="safetensors+zstd",
                       chunk_size=1 << 20, max_update_bytes=1 << 30, mu=mu)
        ctx = make_context(spec, silo="s", data=folder, work_dir=tmp_path, device=torch.device("cpu"), round_number=1)
        task.setup(ctx)
        model = task.build_model(ctx)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        task.train(model, ctx)
        drift[mu] = sum((v.float() - start[k].float()).pow(2).sum().item() for k, v in model.state_dict().items()
                        if v.is_floating_point() and "running" not in k)
    assert 0 < drift[10.0] < 0.5 * drift[0.0], drift
