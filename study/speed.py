"""Measuring speed, shared by the benchmark (study/bench.py) and the recipe's Pareto (study/recipe.py):
the usual training recipe as the baseline every speed-up is a ratio against, the benchmark's sizes,
and the FLOPs of a training (torch's own counter)."""
from __future__ import annotations

import time

import torch

from .config import trained_classes
from .data import load_cifar10


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sizes(size: str) -> dict:
    if size == "gpu":
        return {"model": "resnet18", "batch_size": 512, "steps": 40, "ks": [2, 4, 8], "workers": 8,
                "epochs": 18, "device": "cuda", "n_noise": 5000}
    # CPU: a reduced size that runs in CI (probes at 1/10 of the recipe's banks)
    return {"model": "small_cnn", "batch_size": 64, "steps": 6, "ks": [2, 4], "workers": 2,
            "epochs": 18, "device": "cpu", "n_noise": 500}


# ---------------------------------------------------------------- (a) the usual recipe

class _ArrayDataset(torch.utils.data.Dataset):
    """CIFAR-10 arrays behind the usual per-image PIL pipeline (what torchvision.datasets.CIFAR10
    does): decode to PIL, random crop, flip, ToTensor, Normalize, in DataLoader workers."""

    def __init__(self, x, y, mean, std):
        from torchvision import transforms
        self.x, self.y = x, y
        self.transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4, padding_mode="reflect"),
            transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize(mean.tolist(), std.tolist())])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def baseline(p: dict) -> dict:
    from .models import build_model
    device = torch.device(p["device"])
    data = load_cifar10(p.get("data_root"), p.get("data_verify", "full"))
    mean, std = data.channel_stats()
    loader = torch.utils.data.DataLoader(
        _ArrayDataset(data.train_x, data.train_y, mean, std), batch_size=p["batch_size"], shuffle=True,
        num_workers=p["workers"], pin_memory=device.type == "cuda", drop_last=True, persistent_workers=True)
    model = build_model(p["model"], 10, 0).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    warmup, steps, done = 3, p["steps"], 0
    for x, y in loader:
        if done == warmup:
            sync(device)
            start = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # the usual per-step logging, a host sync
        done += 1
        if done == warmup + steps:
            break
    sync(device)
    return rate("a_baseline_dataloader_fp32", steps * p["batch_size"], time.perf_counter() - start, 1)


def rate(name: str, images: int, seconds: float, models: int) -> dict:
    return {"name": name, "images_per_s": images / seconds, "models": models, "seconds": seconds}


# ---------------------------------------------------------------- FLOPs, for the MFU

def flops_per_image(model_name: str, num_classes: int = 10, train: bool = False, **factors) -> float:
    """FLOPs of one 32x32 image through the model as torch.utils.flop_counter counts them (the
    convolutions and matmuls, 2 per multiply-add; batch-norm and activations are not counted):
    the forward pass, or with `train` the forward and backward passes."""
    from torch.utils.flop_counter import FlopCounterMode

    from .models import build_model
    model = build_model(model_name, num_classes, 0, **factors).to("meta")   # shapes only: nothing is computed
    x = torch.zeros(2, 3, 32, 32, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        if train:
            out.sum().backward()
    return counter.get_total_flops() / len(x)


def training_flops(cfg: dict, n_train: int) -> float:
    """FLOPs of one training as `flops_per_image` counts them: forward and backward passes over
    `epochs` x the full batches of `n_train` images (the trainer drops the ragged last batch).
    Probes are not included: the MFU of a training is this over its seconds."""
    batch = min(cfg["batch_size"], n_train)
    from .models import factors_of
    return cfg["epochs"] * (n_train // batch) * batch * flops_per_image(
        cfg["model"], len(trained_classes(cfg)), train=True, **factors_of(cfg))
