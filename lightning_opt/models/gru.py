"""The mnist1d paper's GRU (bidirectional, hidden 6, a linear head over all time steps: 91%),
written from matrix products so that a population can ``vmap`` it (``nn.GRU`` has no batching
rule). ``GRULayer`` computes ``nn.GRU``'s equations with its parameter names, shapes and
initialisation: ``load_state_dict`` moves weights either way (``tests/test_models.py``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from typing_extensions import override


class GRULayer(nn.Module):
    """One ``nn.GRU(input_size, hidden_size, batch_first=True, bidirectional=...)`` layer.

    For each direction, with gates in ``nn.GRU``'s order (reset, update, new)::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h = (1 - z) * n + z * h

    ``forward`` takes ``(batch, time, input_size)`` and returns every time step's hidden state,
    ``(batch, time, directions * hidden_size)``, as ``nn.GRU``'s first output.
    """

    def __init__(self, input_size: int, hidden_size: int, bidirectional: bool = True) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.suffixes = ["", "_reverse"] if bidirectional else [""]
        for suffix in self.suffixes:
            gates = 3 * hidden_size
            self.register_parameter(
                f"weight_ih_l0{suffix}", nn.Parameter(torch.empty(gates, input_size))
            )
            self.register_parameter(
                f"weight_hh_l0{suffix}", nn.Parameter(torch.empty(gates, hidden_size))
            )
            self.register_parameter(f"bias_ih_l0{suffix}", nn.Parameter(torch.empty(gates)))
            self.register_parameter(f"bias_hh_l0{suffix}", nn.Parameter(torch.empty(gates)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.GRU``'s: every parameter uniform in +-1/sqrt(hidden_size), in the same order."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def stacked_weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``weight_ih, weight_hh, bias_ih, bias_hh`` of every direction: ``(directions, ...)``."""
        return tuple(  # type: ignore[return-value]
            torch.stack([getattr(self, f"{name}_l0{suffix}") for suffix in self.suffixes])
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )

    @override
    def forward(self, x: Tensor) -> Tensor:
        return bidirectional_outputs(
            gru_scan(directed(x, len(self.suffixes)), *self.stacked_weights())
        )


def directed(x: Tensor, directions: int) -> Tensor:
    """``(..., time, in)`` as ``(directions, ..., time, in)``: the reverse direction reads the
    flipped signal."""
    return torch.stack([x, x.flip(-2)][:directions])


def bidirectional_outputs(out: Tensor) -> Tensor:
    """``gru_scan``'s ``(directions, ..., time, hidden)`` as ``nn.GRU``'s first output,
    ``(..., time, directions * hidden)``: the reverse direction's steps flipped back."""
    if len(out) == 2:
        out = torch.stack([out[0], out[1].flip(-2)])
    return torch.cat(list(out), -1)


def gru_scan(seqs: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """``G`` independent GRUs at once (directions, population members or both), ``nn.GRU``'s
    equations (see ``GRULayer``) with one batched product per time step for all of them.

    ``seqs``: ``(G, *batch, time, in)``; weights ``(G, 3 * hidden, in)``, ``(G, 3 * hidden,
    hidden)``, biases ``(G, 3 * hidden)``. Returns every time step's state, ``(G, *batch, time,
    hidden)``.
    """
    groups, steps, hidden = seqs.shape[0], seqs.shape[-2], w_hh.shape[-1]
    batch = seqs.shape[1:-2]
    # Time-major, so that each step's slice is contiguous: (G, time, batch, in).
    flat = seqs.reshape(groups, -1, steps, seqs.shape[-1]).transpose(1, 2)
    inputs = torch.baddbmm(  # every time step's input projection at once
        b_ih.unsqueeze(1), flat.reshape(groups, -1, seqs.shape[-1]), w_ih.transpose(1, 2)
    ).reshape(groups, steps, flat.shape[2], -1)
    h = seqs.new_zeros(groups, flat.shape[2], hidden)
    w_hh_t, b_hh = w_hh.transpose(1, 2), b_hh.unsqueeze(1)
    outputs = []
    # unbind, not inputs[:, t]: the backward of one unbind is one stack, of T slices T
    # full-size zero tensors (4x the time of a K=16 population's step).
    for step_inputs in inputs.unbind(1):
        i_r, i_z, i_n = step_inputs.chunk(3, -1)
        h_r, h_z, h_n = torch.baddbmm(b_hh, h, w_hh_t).chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        h = (1 - z) * n + z * h
        outputs.append(h)
    out = torch.stack(outputs, 2)  # (G, batch, time, hidden)
    return out.reshape(groups, *batch, steps, hidden)


class GRUNet(nn.Module):
    """A GRU over the signal's positions (one value per step) and a ``Linear`` head over every
    time step's hidden state (``directions * hidden_size * input_size`` features).

    Args:
        hidden_size: units per direction (the paper: 6).
        bidirectional: run a second GRU from the end of the signal (the paper: yes).
    """

    def __init__(
        self, input_size: int, num_classes: int, hidden_size: int = 6, bidirectional: bool = True
    ) -> None:
        super().__init__()
        if not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"hidden_size must be a positive integer, got {hidden_size!r}")
        directions = 2 if bidirectional else 1
        self.rnn = GRULayer(1, hidden_size, bidirectional)
        self.linear = nn.Linear(directions * hidden_size * input_size, num_classes)

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.rnn(x.unsqueeze(-1)).flatten(-2))
