"""The mnist1d paper's convolutional net (``ConvBase`` of its repository: 94% on mnist1d)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from typing_extensions import override


def conv_length(length: int, kernel: int, stride: int = 2, padding: int = 1) -> int:
    """The output length of a ``Conv1d`` over ``length`` positions."""
    return (length + 2 * padding - kernel) // stride + 1


class ConvNet(nn.Module):
    """Three ``Conv1d`` layers (kernels 5, 3, 3; stride 2; padding 1; ReLU) and a ``Linear`` head
    over the flattened features: 40 positions -> 19 -> 10 -> 5, so 125 features at 25 channels.

    Args:
        channels: channels of every convolution (the paper: 25).
    """

    KERNELS = (5, 3, 3)

    def __init__(self, input_size: int, num_classes: int, channels: int = 25) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels!r}")
        length = input_size
        for kernel in self.KERNELS:
            length = conv_length(length, kernel)
        if length < 1:
            raise ValueError(
                f"a signal of {input_size} positions is too short for three stride-2 "
                "convolutions; use --data.final_seq_length 8 or more"
            )
        k1, k2, k3 = self.KERNELS
        self.conv1 = nn.Conv1d(1, channels, k1, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, k2, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, k3, stride=2, padding=1)
        self.linear = nn.Linear(channels * length, num_classes)

    @override
    def forward(self, x: Tensor) -> Tensor:
        h = x.unsqueeze(-2)  # (batch, 1, positions)
        h = self.conv1(h).relu()
        h = self.conv2(h).relu()
        h = self.conv3(h).relu()
        return self.linear(h.flatten(-2))


def stacked_conv1d(x: Tensor, weight: Tensor, bias: Tensor, stride: int, padding: int) -> Tensor:
    """K members' ``Conv1d`` at once as one batched matrix product (im2col), positions-major:
    ``x (K, batch, length, in)``, ``weight (K, out, in, kernel)``, ``bias (K, out)`` ->
    ``(K, batch, length_out, out)``, contiguous (the same sums as ``F.conv1d`` of each member;
    channels-first slices would make every elementwise op and its backward strided, 5x slower)."""
    members, batch, _, channels = x.shape
    kernel = weight.shape[-1]
    padded = torch.nn.functional.pad(x, (0, 0, padding, padding))
    length = (padded.shape[2] - kernel) // stride + 1
    span = stride * (length - 1) + 1
    # One strided slice per kernel tap, stacked (unfold's backward is 5x slower here).
    taps = [padded[:, :, j : j + span : stride] for j in range(kernel)]
    cols = torch.stack(taps, -1).reshape(members, batch * length, channels * kernel)
    out = torch.baddbmm(bias.unsqueeze(1), cols, weight.flatten(2).transpose(1, 2))
    return out.reshape(members, batch, length, -1)
