"""A hand-written reference: K independent mnist1d MLPs (40 -> 100 -> 10, batch 100, Adam with
per-member learning rates, each member its own data order) trained at once, with one validation
pass an epoch read back once. The ceiling the project's populations are held against.

It computes what ``fit --optimizer adam --seeds [...]`` computes for the default MLP (the same
layers, loss, optimizer and batches; not the same initial values): batched matrix products
(``baddbmm``), autograd for the gradients, ``torch._foreach_*`` Adam, and on CUDA, optionally,
the whole step captured as one CUDA graph (``graphs=True``). Nothing else: no Lightning, no
logging, no checks. Adapted from ``shared/gpu/reference_population.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

HIDDEN = 100


@dataclass
class ReferencePopulation:
    """K MLPs over ``(x_train, y_train)``, validated on ``(x_val, y_val)``, on their device."""

    members: int
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    batch_size: int = 100
    graphs: bool = False

    def __post_init__(self) -> None:
        k, d, c, h = self.members, self.x_train.shape[1], int(self.y_train.max()) + 1, HIDDEN
        dev = self.x_train.device
        g = torch.Generator().manual_seed(0)
        w1 = (torch.rand(k, d, h, generator=g) * 2 - 1) / d**0.5
        w2 = (torch.rand(k, h, c, generator=g) * 2 - 1) / h**0.5
        self.params = [t.to(dev).requires_grad_() for t in
                       (w1, torch.zeros(k, 1, h), w2, torch.zeros(k, 1, c))]  # fmt: skip
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.lr = torch.logspace(-3.5, -1.5, k, device=dev).view(k, 1, 1)
        self.step_count = torch.zeros((), device=dev)
        self.order_gen = torch.Generator(device=dev).manual_seed(1)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_x = self._static_y = None

    def _forward(self, x: Tensor) -> Tensor:
        w1, b1, w2, b2 = self.params
        return torch.baddbmm(b2, torch.relu(torch.baddbmm(b1, x, w1)), w2)

    def _step(self, x: Tensor, y: Tensor) -> None:
        logits = self._forward(x)  # (K, B, C)
        loss = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1).sum()
        grads = torch.autograd.grad(loss, self.params)
        with torch.no_grad():
            self.step_count.add_(1)
            bc1 = 1 - 0.9**self.step_count
            bc2 = (1 - 0.999**self.step_count).sqrt()
            torch._foreach_lerp_(self.m, grads, 0.1)
            torch._foreach_mul_(self.v, 0.999)
            torch._foreach_addcmul_(self.v, grads, grads, 0.001)
            den = torch._foreach_sqrt(self.v)
            torch._foreach_div_(den, bc2)
            torch._foreach_add_(den, 1e-8)
            upd = torch._foreach_div(self.m, den)
            scale = self.lr / bc1  # (K, 1, 1): each member its own step size
            for p, u in zip(self.params, upd, strict=True):
                p.sub_(u * scale)

    def _capture(self, x: Tensor, y: Tensor) -> None:
        self._static_x, self._static_y = x.clone(), y.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up steps, as CUDA graph capture requires
                self._step(self._static_x, self._static_y)
        torch.cuda.current_stream().wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._step(self._static_x, self._static_y)

    def epoch(self) -> tuple[list[float], list[float]]:
        """One epoch (every member its own shuffle) and one validation pass: each member's
        validation loss and accuracy, read back once."""
        k, n, b = self.members, len(self.y_train), self.batch_size
        dev = self.x_train.device
        order = torch.rand(k, n, generator=self.order_gen, device=dev).argsort(1)
        xs, ys = self.x_train[order], self.y_train[order]  # (K, N, D), (K, N)
        for start in range(0, n - b + 1, b):  # full batches (a CUDA graph has one shape)
            x, y = xs[:, start : start + b], ys[:, start : start + b]
            if self.graphs and dev.type == "cuda":
                if self._graph is None:
                    self._capture(x, y)
                self._static_x.copy_(x)
                self._static_y.copy_(y)
                self._graph.replay()
            else:
                self._step(x, y)
        with torch.no_grad():
            logits = self._forward(self.x_val.expand(k, -1, -1))
            target = self.y_val.expand(k, -1)
            loss = F.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(1)
            acc = (logits.argmax(-1) == target).float().mean(1)
        return loss.tolist(), acc.tolist()


def seconds_per_epoch(ref: ReferencePopulation, epochs: int) -> list[float]:
    """Wall seconds of each of ``epochs`` epochs after one untimed one."""
    ref.epoch()
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        ref.epoch()  # ends in a read-back, so the device is done
        times.append(time.perf_counter() - start)
    return times
