"""K copies of one network as one module whose parameters stack the members on dimension 0.

``stack_nets(nets)`` returns a module with the single net's parameter names (``conv1.weight``,
``0.bias``), each of shape ``(K, *shape)``, whose ``forward`` takes ``(K, batch, ...)`` (each
member its own examples) or ``(batch, ...)`` (every member the same). One mechanism serves any
module: ``torch.func.functional_call`` under ``torch.vmap`` (``StackedModule``). Fast paths are
registered beside it where a benchmark shows them faster (``perf/bench_population.py``): an
``nn.Sequential`` of ``Linear`` layers and activations runs as batched matrix products
(``StackedLinear``: 2.5 against 3.3 ms a step for the MLP at K=16 on this project's machine).

A module that cannot run as K independent members says why (``why_not_stackable``): one that
keeps buffers (BatchNorm's running statistics), draws random numbers (Dropout: its masks would
not be those of the member's own run), or has no vmap rule for an operation (``nn.GRU``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from typing_extensions import override

from lightning_opt.models.cnn import ConvNet, stacked_conv1d
from lightning_opt.models.gru import GRUNet, bidirectional_outputs, directed, gru_scan
from lightning_opt.models.mlp import linear_layers


class StackedLinear(nn.Module):
    """K independent ``nn.Linear`` layers: ``weight (K, out, in)``, ``bias (K, out)``.

    ``forward`` takes ``(K, batch, in)``, or ``(batch, in)`` shared by every member.
    """

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))

    @override
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            x = x.expand(len(self.weight), *x.shape)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


def stack_mlps(nets: Sequence[nn.Sequential]) -> nn.Sequential:
    """One ``nn.Sequential`` of ``StackedLinear`` layers holding ``nets`` as members.

    Layer indices are kept, so parameter names (``0.weight``, ...) match the single model's.
    """
    layers: list[nn.Module] = []
    for members in zip(*nets, strict=True):
        first = members[0]
        layers.append(StackedLinear(members) if isinstance(first, nn.Linear) else copy.copy(first))
    return nn.Sequential(*layers)


class StackedModule(nn.Module):
    """Any net's K members: the template's module tree, each parameter replaced by the stack of
    the members' (so names and ``state_dict`` keys are the single net's), run through
    ``functional_call`` under ``vmap``. The tree only holds the parameters; the computation is
    the template's own ``forward``."""

    def __init__(self, nets: Sequence[nn.Module]) -> None:
        super().__init__()
        holder = copy.deepcopy(nets[0])
        members = [dict(net.named_parameters()) for net in nets]
        for name, module in list(holder.named_modules()):
            for pname, _ in list(module.named_parameters(recurse=False)):
                full = f"{name}.{pname}" if name else pname
                stacked = torch.stack([m[full].detach() for m in members])
                module._parameters[pname] = nn.Parameter(stacked)
        for name, child in holder.named_children():
            self.add_module(name, child)
        for pname, param in holder.named_parameters(recurse=False):
            self.register_parameter(pname, param)
        # The template computes; it is kept out of the module tree (no parameters of its own
        # are counted, moved or saved) and every call substitutes the members' tensors.
        self._template = (copy.deepcopy(nets[0]).to("meta"),)

    @property
    def num_members(self) -> int:
        """The live members: a population that drops some narrows every parameter."""
        return len(next(self.parameters()))

    def _call(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self._template[0], params, (x,))

    @override
    def forward(self, x: Tensor) -> Tensor:
        params = dict(self.named_parameters())
        shared = x.dim() == self._example_dims
        return torch.vmap(self._call, in_dims=(0, None if shared else 0))(params, x)

    #: Dimensions of one member's batch (mnist1d: ``(batch, positions)``).
    _example_dims = 2


class StackedConvNet(StackedModule):
    """K ``ConvNet`` members (a fast path): each convolution one batched matrix product over the
    members (im2col, ``models.cnn.stacked_conv1d``); ``vmap`` turns them into grouped
    convolutions, about twice as slow on CPU (``perf/bench_population.py --net cnn``)."""

    @override
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == self._example_dims:  # every member the same examples
            x = x.expand(self.num_members, *x.shape)
        h = x.unsqueeze(-1)  # (K, batch, positions, 1)
        for layer in (self.conv1, self.conv2, self.conv3):
            h = stacked_conv1d(h, layer.weight, layer.bias, stride=2, padding=1).relu()
        features = h.transpose(-1, -2).flatten(-2)  # ConvNet's (channels, positions) order
        return torch.baddbmm(
            self.linear.bias.unsqueeze(1), features, self.linear.weight.transpose(1, 2)
        )


class StackedGRUNet(StackedModule):
    """K ``GRUNet`` members (a fast path): every member's directions run as one
    ``models.gru.gru_scan`` of ``K * directions`` GRUs, without ``vmap``."""

    @override
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == self._example_dims:
            x = x.expand(self.num_members, *x.shape)
        suffixes = self.rnn.suffixes
        weights = [
            torch.stack([getattr(self.rnn, f"{name}_l0{s}") for s in suffixes], 1).flatten(0, 1)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]  # (K * directions, ...)
        seqs = directed(x.unsqueeze(-1), len(suffixes)).transpose(0, 1).flatten(0, 1)
        out = gru_scan(seqs, *weights)  # (K * D, batch, time, hidden)
        out = out.unflatten(0, (self.num_members, len(suffixes))).transpose(0, 1)
        features = bidirectional_outputs(out).flatten(-2)  # (K, batch, features)
        return torch.baddbmm(
            self.linear.bias.unsqueeze(1), features, self.linear.weight.transpose(1, 2)
        )


#: Fast paths: ``(matches(net) -> bool, stack(nets) -> module)``, tried in order before the
#: generic ``StackedModule``.
FAST_PATHS: list[tuple[Callable[[nn.Module], bool], Callable[[Sequence[nn.Module]], nn.Module]]] = [
    (lambda net: linear_layers(net) is not None, stack_mlps),
    (lambda net: type(net) is GRUNet, StackedGRUNet),
    (lambda net: type(net) is ConvNet, StackedConvNet),
]


def why_not_stackable(net: nn.Module, input_size: int) -> str | None:
    """Why ``net`` cannot train as population members (one line), or ``None`` if it can."""
    buffers = [name for name, _ in net.named_buffers()]
    if buffers:
        return (
            f"{type(net).__name__} keeps buffers ({', '.join(buffers[:3])}"
            f"{', ...' if len(buffers) > 3 else ''}: BatchNorm-like state), which population "
            "members cannot keep apart"
        )
    random = [
        name or type(net).__name__
        for name, m in net.named_modules()
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
    ]
    if random:
        return (
            f"{type(net).__name__} has dropout ({', '.join(random[:3])}), whose masks in a "
            "population would not be those of each member's own run"
        )
    if any(matches(net) for matches, _ in FAST_PATHS):
        return None
    try:
        StackedModule([net, net])(torch.zeros(2, input_size))
    except (RuntimeError, NotImplementedError) as err:
        reason = " ".join(str(err).split())[:160]
        return f"{type(net).__name__} does not run under torch.vmap ({reason})"
    return None


def stack_nets(nets: Sequence[nn.Module]) -> nn.Module:
    """One module holding ``nets`` (same architecture) as members (see the module docstring)."""
    for matches, stack in FAST_PATHS:
        if matches(nets[0]):
            return stack(nets)
    return StackedModule(nets)
