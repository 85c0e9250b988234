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

    def _direction(self, x: Tensor, suffix: str, reverse: bool) -> Tensor:
        w_ih, w_hh = getattr(self, f"weight_ih_l0{suffix}"), getattr(self, f"weight_hh_l0{suffix}")
        b_ih, b_hh = getattr(self, f"bias_ih_l0{suffix}"), getattr(self, f"bias_hh_l0{suffix}")
        inputs = torch.nn.functional.linear(x, w_ih, b_ih)  # every time step at once
        h = x.new_zeros(*x.shape[:-2], self.hidden_size)
        steps = range(x.shape[-2] - 1, -1, -1) if reverse else range(x.shape[-2])
        outputs = [h] * x.shape[-2]
        for t in steps:
            i_r, i_z, i_n = inputs[..., t, :].chunk(3, -1)
            h_r, h_z, h_n = torch.nn.functional.linear(h, w_hh, b_hh).chunk(3, -1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            h = (1 - z) * n + z * h
            outputs[t] = h
        return torch.stack(outputs, -2)

    @override
    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [self._direction(x, suffix, reverse=bool(suffix)) for suffix in self.suffixes], -1
        )


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
