"""Detection training cost: seconds per local step and per round, for both Faster R-CNN models.

Run with the project installed: ``python benchmarks/detection_step.py [--device cuda] [--steps N]``.
Prints one JSON line per model. A "round" here is what a silo does in one round of a job with
``--local-epochs 1``: load the global weights, train one epoch over its training images, encode
its update for the wire, and evaluate on its test split (COCO mAP with pycocotools).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from fedmq.edge_client.context import make_context
from fedmq.edge_client.data.coco import collate_detection, detection_labels, synth_detection
from fedmq.edge_client.detection import DetectionTask
from fedmq.schemas import JobSpec
from fedmq.schemas.codec import encode_state
from torch.utils.data import DataLoader

MODELS = ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn")


def _spec(model: str, labels: list[str], batch_size: int) -> JobSpec:
    return JobSpec(job="bench", run_id="bench", status="running", task="detection", model=model, labels=labels,
                   rounds=1, min_clients=1, local_epochs=1, batch_size=batch_size, lr=0.005, seed=0,
                   codec="safetensors+zstd", chunk_size=1 << 20, max_update_bytes=1 << 30)


def bench(model_name: str, data: Path, device: str, steps: int, batch_size: int) -> dict:
    task = DetectionTask(data)
    spec = _spec(model_name, detection_labels(data), batch_size)
    ctx = make_context(spec, silo="bench", data=data, work_dir=data, device=torch.device(device), round_number=1)
    task.setup(ctx)
    model = task.build_model(ctx).to(device)  # the task trains wherever the model is
    optimiser = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.9)
    loader = DataLoader(task.train_set, batch_size=batch_size, shuffle=True, collate_fn=collate_detection)
    batches = [b for _, b in zip(range(steps + 1), _cycle(loader))]
    model.train()
    times = []
    for i, (images, targets) in enumerate(batches):
        images = [x.to(device) for x in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        _sync(device)
        start = time.perf_counter()
        loss = sum(model(images, targets).values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        _sync(device)
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - start)
    step_s = sorted(times)[len(times) // 2]

    start = time.perf_counter()
    task.train(model, ctx)
    _sync(device)
    train_s = time.perf_counter() - start
    payload = encode_state({k: v.detach().cpu() for k, v in model.state_dict().items()})
    eval_samples, _ = task.evaluate(model, ctx)
    _sync(device)
    round_s = time.perf_counter() - start
    raw_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return {
        "model": model_name, "device": device, "device_name": _device_name(device), "batch_size": batch_size,
        "image_size": int(task.train_set[0][0].shape[-1]), "s_per_step": round(step_s, 4),
        "train_images": len(task.train_set), "s_per_round": round(round_s, 2), "train_s": round(train_s, 2),
        "update_mb": round(len(payload) / 1e6, 2), "raw_mb": round(raw_bytes / 1e6, 2),
        "eval_images": eval_samples, "threads": torch.get_num_threads(),
    }


def _cycle(loader: DataLoader):
    while True:
        yield from loader


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--images-per-silo", type=int, default=24)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        [data] = synth_detection(Path(tmp), silos=1, images_per_silo=args.images_per_silo, seed=0)
        for model in args.models:
            print(json.dumps(bench(model, data, args.device, args.steps, args.batch_size)), flush=True)


if __name__ == "__main__":
    main()
