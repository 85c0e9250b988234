"""Networks for mnist1d: the built-ins of the mnist1d paper by short name, any ``nn.Module``
by class path (see ``registry``)."""

from lightning_opt.models.cnn import ConvNet
from lightning_opt.models.gru import GRULayer, GRUNet
from lightning_opt.models.mlp import MLP, LinearNet, ResMLP
from lightning_opt.models.registry import (
    ENTRY_POINT_GROUP,
    NetFactory,
    NetInfo,
    build_net,
    describe_net,
    get_net,
    list_nets,
    net_arguments,
    net_config,
    net_short_name,
    register_net,
    resolve_net,
    resolve_net_argument,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "MLP",
    "ConvNet",
    "GRULayer",
    "GRUNet",
    "LinearNet",
    "NetFactory",
    "NetInfo",
    "ResMLP",
    "build_net",
    "describe_net",
    "get_net",
    "list_nets",
    "net_arguments",
    "net_config",
    "net_short_name",
    "register_net",
    "resolve_net",
    "resolve_net_argument",
]

for _info in (
    NetInfo("linear", "lightning_opt.models.mlp.LinearNet", "logistic regression (mnist1d: 32%)"),
    NetInfo(
        "mlp", "lightning_opt.models.mlp.MLP", "MLP, one hidden layer of 100 (the seed notes')"
    ),
    NetInfo(
        "resmlp",
        "lightning_opt.models.mlp.ResMLP",
        "residual MLP, 2 layers of 100: the repo's MLPBase (68%)",
    ),
    NetInfo(
        "cnn", "lightning_opt.models.cnn.ConvNet", "three Conv1d of 25 channels (mnist1d: 94%)"
    ),
    NetInfo("gru", "lightning_opt.models.gru.GRUNet", "bidirectional GRU, hidden 6 (mnist1d: 91%)"),
):
    register_net(_info)
