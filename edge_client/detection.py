"""The detection task: COCO-format silo folders, torchvision Faster R-CNN, COCO mAP with pycocotools."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import DataError
from ..schemas.catalog import BUILTIN_DEFAULTS
from .coco_metrics import coco_bbox_metrics, predictions_to_detections
from .data.coco import CocoDetectionDataset, collate_detection, detection_labels
from .device import model_device
from .models import build_model
from .task import EvalResult, Task, TaskContext, TaskDefaults, TrainResult

EVAL_BATCH = 4
WEIGHT_DECAY = 1e-4


class DetectionTask(Task):
    """COCO-format silo folders (DIR/train/annotations.json), torchvision Faster R-CNN, COCO mAP."""

    name = "detection"
    defaults = TaskDefaults(**BUILTIN_DEFAULTS["detection"])  # batch 4: detection images are large

    def __init__(self, data: Path) -> None:
        super().__init__(data)
        self.labels = detection_labels(data)
        if not self.labels:
            raise DataError(f"{data} names no categories in its annotations.json files",
                            hint="each split's annotations.json needs a COCO 'categories' list")
        self.train_set: CocoDetectionDataset | None = None
        self.test_set: CocoDetectionDataset | None = None

    def setup(self, ctx: TaskContext) -> None:
        labels = list(ctx.labels)
        self.train_set = CocoDetectionDataset(self.data / "train", labels)
        test_dir = self.data / "test"
        self.test_set = CocoDetectionDataset(test_dir, labels) if (test_dir / "annotations.json").exists() else None
        if len(self.train_set) == 0:
            raise DataError(f"{self.data}/train/annotations.json lists no images", hint="add training images")
        self._shuffle = torch.Generator().manual_seed(ctx.seed)

    def build_model(self, ctx: TaskContext) -> nn.Module:
        return build_model(self.name, ctx.model, ctx.num_classes, ctx.seed)

    def train(self, model: nn.Module, ctx: TaskContext) -> TrainResult:
        n = len(self.train_set)
        if ctx.local_epochs == 0:
            return TrainResult(num_samples=n, loss=None)
        loader = DataLoader(self.train_set, batch_size=ctx.batch_size, shuffle=ctx.sampler is None, sampler=ctx.sampler,
                            generator=self._shuffle, collate_fn=collate_detection)
        params = [p for p in model.parameters() if p.requires_grad]
        optimiser = torch.optim.SGD(params, lr=ctx.lr, momentum=ctx.momentum, weight_decay=WEIGHT_DECAY)
        prox = ctx.proximal(model)  # FedProx; 0 for every other strategy
        model.train()
        device = model_device(model)
        total, steps = 0.0, 0
        for epoch in range(1, ctx.local_epochs + 1):
            for step, (images, targets) in enumerate(loader, start=1):
                images, targets = _to(device, images, targets)
                parts = model(images, targets)
                loss = sum(parts.values()) + prox()
                if not torch.isfinite(loss):
                    raise DataError(f"training diverged at epoch {epoch} step {step} (loss {loss.item()})",
                                    hint="lower the job's --lr")
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += loss.item()
                steps += 1
                ctx.log_step(epoch, step, {"total_loss": loss.item(), **{k: v.item() for k, v in parts.items()}})
        return TrainResult(num_samples=n, loss=total / max(steps, 1))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, ctx: TaskContext) -> EvalResult:
        if not self.test_set:
            return EvalResult(0, {})
        model.eval()
        device = model_device(model)
        detections: list[dict] = []
        for images, targets in DataLoader(self.test_set, batch_size=EVAL_BATCH, collate_fn=collate_detection):
            images, targets = _to(device, images, targets)
            for target, output in zip(targets, model(images)):
                detections.extend(predictions_to_detections(int(target["image_id"]), output))
            ctx.eval_progress(len(images))
        metrics = coco_bbox_metrics(self.test_set.coco_ground_truth(), detections)
        return EvalResult(len(self.test_set), metrics)


def _to(device: torch.device, images: tuple, targets: tuple) -> tuple[list[torch.Tensor], list[dict]]:
    moved = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    return [image.to(device) for image in images], moved
