"""What the closure path costs: our ``fit`` against a bare PyTorch loop of the same optimizer.

    python perf/bench_closure.py [--epochs 5] [--repeats 3] [--out perf/results/closure.json]

For Adam (which calls the closure once, as every step did before closures), LBFGS (``max_iter``
4: several evaluations a step) and pytorch-optimizer's SAM (gradients first, then
``step(closure)``: two evaluations), the MLP 40 -> 100 -> 10 trains on the same 3,200 mnist1d
examples at batch 100, in this one process, repetitions interleaved. The bare loop builds the
closure by hand as each optimizer's documentation says; ours is the default ``fit`` (Lightning's
contract, all logging on). Medians of ms per optimizer step and their ratio are printed and
written as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from _report import machine_info, write_json
from bench_fit import _splits, lightning_opt_fit, make_net

from lightning_opt.optim.registry import construct, resolve_optimizer

OPTIMIZERS = {  # name -> (optimizer config, --optimizer flags, evaluations before the step)
    "adam": ({"class_path": "torch.optim.Adam", "init_args": {"lr": 0.00624}}, ["adam"], False),
    "lbfgs": (
        {"class_path": "torch.optim.LBFGS", "init_args": {"lr": 0.1, "max_iter": 4}},
        ["torch.optim.LBFGS", "--optimizer.lr=0.1", "--optimizer.max_iter=4"],
        False,
    ),
    "sam": (
        {
            "class_path": "pytorch_optimizer.SAM",
            "init_args": {"base_optimizer": "torch.optim.SGD", "lr": 0.05},
        },
        [
            "pytorch_optimizer.SAM",
            "--optimizer.base_optimizer=torch.optim.SGD",
            "--optimizer.dict_kwargs.lr=0.05",
        ],
        True,
    ),
}


def bare_loop(splits, config: dict, evaluate_first: bool, epochs: int) -> float:
    """Seconds per step of a plain loop with a hand-written closure (validation each epoch)."""
    torch.manual_seed(0)
    x, y = splits["train"]
    xv, yv = splits["val"]
    net = make_net("mlp")
    cls, resolved = resolve_optimizer(config)
    opt = construct(cls, list(net.parameters()), resolved["init_args"])
    steps = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for idx in order.split(100):

            def closure(idx=idx):
                opt.zero_grad()
                loss = F.cross_entropy(net(x[idx]), y[idx])
                loss.backward()
                return loss

            if evaluate_first:
                closure()
            opt.step(closure)
            steps += 1
        with torch.no_grad():
            F.cross_entropy(net(xv), yv)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("perf/results/closure.json"))
    parser.add_argument(
        "--optimizers", nargs="+", choices=list(OPTIMIZERS), default=list(OPTIMIZERS)
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    times = {name: {"bare": [], "ours": []} for name in args.optimizers}
    with tempfile.TemporaryDirectory() as tmp:
        splits = _splits(tmp)
        for _ in range(args.repeats):
            for name in args.optimizers:
                config, flags, first = OPTIMIZERS[name]
                times[name]["bare"].append(bare_loop(splits, config, first, args.epochs))
                optimizer, *extra = flags
                times[name]["ours"].append(
                    lightning_opt_fit(optimizer, extra, args.epochs, tmp, tmp)
                )
    rows = {}
    print(f"{'optimizer':<10} {'bare ms':>9} {'ours ms':>9} {'ours/bare':>10}")
    for name, measured in times.items():
        bare = statistics.median(measured["bare"]) * 1e3
        ours = statistics.median(measured["ours"]) * 1e3
        rows[name] = {"bare_ms": bare, "ours_ms": ours, "ratio": ours / bare, "raw": measured}
        print(f"{name:<10} {bare:9.2f} {ours:9.2f} {ours / bare:10.2f}")
    write_json(args.out, {"machine": machine_info(), "epochs": args.epochs, "results": rows})


if __name__ == "__main__":
    main()
