"""Fully connected nets: logistic regression, the MLP of the seed notes, a residual MLP."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from typing_extensions import override

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


def activation_class(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class LinearNet(nn.Sequential):
    """Logistic regression: one ``Linear`` from the signal to the class logits (mnist1d: 32%)."""

    def __init__(self, input_size: int, num_classes: int) -> None:
        super().__init__(nn.Linear(input_size, num_classes))


class MLP(nn.Sequential):
    """``Linear -> activation`` for each hidden size, then a ``Linear`` to the class logits.

    Args:
        hidden_sizes: width of each hidden layer (mnist1d's reference MLP: one layer of 100).
        activation: relu, gelu, tanh or silu.
    """

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        hidden_sizes: list[int] = [100],  # noqa: B006  (LightningCLI shows the default in --help)
        activation: str = "relu",
    ) -> None:
        act = activation_class(activation)
        sizes = list(hidden_sizes)
        if not sizes or any(not isinstance(h, int) or h < 1 for h in sizes):
            raise ValueError(
                f"hidden_sizes must be a non-empty list of positive integers, got {sizes}"
            )
        layers: list[nn.Module] = []
        width = input_size
        for h in sizes:
            layers += [nn.Linear(width, h), act()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class ResMLP(nn.Module):
    """A residual MLP: ``h = act(stem(x))``, then ``depth`` blocks ``h = h + act(W h + b)``,
    then a ``Linear`` head. The defaults are the mnist1d repository's ``MLPBase`` (the MLP of
    its results table, 68%): two hidden layers of 100, the second residual.

    Args:
        width: units of the stem and of every block.
        depth: residual blocks after the stem (1: the repository's two-layer residual MLP).
        activation: relu, gelu, tanh or silu.
    """

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        width: int = 100,
        depth: int = 1,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        if not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth must be a non-negative integer, got {depth!r}")
        self.act = activation_class(activation)()
        self.stem = nn.Linear(input_size, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, num_classes)

    @override
    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.stem(x))
        for block in self.blocks:
            h = h + self.act(block(h))
        return self.head(h)


def linear_layers(net: nn.Module) -> Sequence[nn.Linear] | None:
    """The ``Linear`` layers of ``net`` if it is an ``nn.Sequential`` of ``Linear`` layers and
    parameter-free, buffer-free activations (the batched-matmul fast path), else ``None``."""
    if not isinstance(net, nn.Sequential):
        return None
    layers = []
    for layer in net:
        if type(layer) is nn.Linear and layer.bias is not None:
            layers.append(layer)
        elif type(layer) in ACTIVATIONS.values():
            continue
        else:
            return None
    return layers or None
