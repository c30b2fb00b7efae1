"""PyTorch's single-thread training throughput for lazyavg's presets.

Trains the `torch.nn.Sequential` equivalent of `--model mlp`, `lenet5` or
`cnn` on MNIST with the optimiser lazyavg uses by default (SGD, lr 0.05,
Nesterov momentum 0.9, weight decay 1e-4, softmax cross-entropy) and prints
one JSON line per batch size: the median samples/s of REPETITIONS timed
stretches after a warm-up stretch, the same protocol as `lazyavg bench train`.
Run by bench/pytorch.sh, which alternates it with lazyavg.

    python bench/pytorch.py DATA_DIR MODEL SECONDS BATCH [BATCH ...]
"""

import gzip
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPETITIONS = 5


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (raw or .gz) as an array of its shape."""
    if not path.exists():
        path = path.with_name(path.name + ".gz")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def model(name: str) -> nn.Sequential:
    """The preset's layers, in the order and with the shapes of lazyavg's files."""
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))
    if name == "lenet5":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, 10),
        )
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 512), nn.ReLU(),
            nn.Linear(512, 10),
        )
    raise SystemExit(f"pytorch.py: unknown model {name!r}; give mlp, lenet5 or cnn")


def samples_per_second(net, images, labels, batch, seconds):
    """Median samples/s over REPETITIONS stretches of `seconds`, after one warm-up."""
    optimiser = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    batches = len(images) // batch
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    step = 0
    rates = []
    for repetition in range(REPETITIONS + 1):
        start, samples = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            index = order[(step % batches) * batch : (step % batches + 1) * batch]
            optimiser.zero_grad(set_to_none=True)
            loss_fn(net(images[index]), labels[index]).backward()
            optimiser.step()
            step += 1
            samples += batch
        if repetition > 0:
            rates.append(samples / (time.perf_counter() - start))
    return statistics.median(rates)


def main():
    data_dir, name, seconds, *batches = sys.argv[1:]
    torch.set_num_threads(1)
    torch.manual_seed(1)
    images = torch.from_numpy(read_idx(Path(data_dir) / "train-images-idx3-ubyte").astype(np.float32) / 255.0)
    images = images.unsqueeze(1)
    labels = torch.from_numpy(read_idx(Path(data_dir) / "train-labels-idx1-ubyte").astype(np.int64))
    for batch in map(int, batches):
        net = model(name)
        rate = samples_per_second(net, images, labels, batch, float(seconds) / REPETITIONS)
        print(json.dumps({"torch": torch.__version__, "model": name, "batch": batch, "samples_per_s": rate}), flush=True)


if __name__ == "__main__":
    main()
