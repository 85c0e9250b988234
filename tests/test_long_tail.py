"""The optimizer long tail (torch-optimizer, torch-optimi, came-pytorch, adam-atan2-pytorch,
grokfast-pytorch, galore-torch, apollo-torch; the ``test`` extra): the patterns that kept classes
out, each fixed at its root, and a sample of the classes against a bare PyTorch loop of the same
class (same initial weights, same minibatches, the class built by hand)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from conftest import MNIST1D, RecordBatches, quiet_trainer, tiny_data
from lightning.pytorch import seed_everything

from lightning_opt.cli.main import cli_main
from lightning_opt.core.reflection import import_class
from lightning_opt.optim import state_data
from lightning_opt.training.classifier import MNIST1DClassifier

GALORE = {"ndim": 2, "rank": 4, "update_proj_gap": 2, "scale": 0.25, "proj_type": "std"}


def _two_d(net):
    return [p for p in net.parameters() if p.ndim == 2]


def _rest(net):
    return [p for p in net.parameters() if p.ndim != 2]


# (package, optimizer config, param_groups rules, the class built by hand over a net)
BARE = {
    "torch_optimizer.Yogi": (
        "torch_optimizer", "torch_optimizer.Yogi", [],
        lambda cls, net: cls(net.parameters()),
    ),
    "optimi.AdamW": (
        "optimi", {"class_path": "optimi.AdamW", "init_args": {"lr": 1e-3}}, [],
        lambda cls, net: cls(net.parameters(), lr=1e-3),
    ),
    "came_pytorch.CAME": (
        "came_pytorch", {"class_path": "came_pytorch.CAME", "init_args": {"lr": 1e-3}}, [],
        lambda cls, net: cls(net.parameters(), lr=1e-3),
    ),
    "grokfast_pytorch.GrokFastAdamW": (
        "grokfast_pytorch", "grokfast_pytorch.GrokFastAdamW", [],
        lambda cls, net: cls(net.parameters()),
    ),
    "adam_atan2_pytorch.MuonAdamAtan2": (
        "adam_atan2_pytorch", "adam_atan2_pytorch.MuonAdamAtan2",
        [{"ndim": 2, "into": "muon_params"}],
        lambda cls, net: cls(_two_d(net), _rest(net)),
    ),
    "galore_torch.GaLoreAdamW": (
        "galore_torch", "galore_torch.GaLoreAdamW", [GALORE],
        lambda cls, net: cls([
            {"params": _rest(net)},
            {"params": _two_d(net), **{k: v for k, v in GALORE.items() if k != "ndim"}},
        ]),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BARE))
def test_a_long_tail_class_takes_the_steps_of_a_bare_loop(name, data_cache):
    package, optimizer, rules, bare = BARE[name]
    pytest.importorskip(package)
    seed_everything(0, verbose=False)
    model = MNIST1DClassifier(
        optimizer=optimizer, param_groups=rules, log_internals=False, **MNIST1D
    )
    start = copy.deepcopy(model.net).double()
    batches = RecordBatches()
    quiet_trainer(2, callbacks=[batches]).fit(model, datamodule=tiny_data(data_cache))

    net = start
    opt = bare(import_class(name), net)
    for x, y in batches.seen:
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    for mine, theirs in zip(model.net.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-12)


def test_group_keys_only_the_step_reads_are_taken_and_a_misspelt_one_is_refused():
    """galore-torch's rank, update_proj_gap, scale and proj_type are no constructor arguments:
    its step reads them from the group. The pre-flight step shows which keys a class reads; a
    key it never reads is refused, as a misspelt weight_decay is."""
    pytest.importorskip("galore_torch")
    MNIST1DClassifier(optimizer="galore_torch.GaLoreAdamW", param_groups=[GALORE], **MNIST1D)
    with pytest.raises(ValueError) as refused:
        MNIST1DClassifier(
            optimizer="galore_torch.GaLoreAdamW", param_groups=[{**GALORE, "rnak": 4}],
            **MNIST1D,
        )  # fmt: skip
    assert "rnak is not an argument of AdamW, nor read from its groups" in str(refused.value)
    assert "\n" not in str(refused.value)
    misspelt = {k: v for k, v in GALORE.items() if k != "update_proj_gap"}
    with pytest.raises(ValueError) as refused:  # the step fails first, on the key it lacks
        MNIST1DClassifier(
            optimizer="galore_torch.GaLoreAdamW",
            param_groups=[{**misspelt, "update_proj_gapp": 2}], **MNIST1D,
        )  # fmt: skip
    assert "(KeyError: 'update_proj_gap')" in str(refused.value)
    assert str(refused.value).endswith(
        "; param_groups set update_proj_gapp (did you mean update_proj_gap?), never read"
    )


def test_a_state_object_is_checkpointed_as_data_and_a_resume_equals_one_run(
    tiny_fit_args, tmp_path, capsys
):
    """GaLore keeps a GaLoreProjector object in its state. Its checkpoint is data (a
    weights-only load reads it: test, validate), and a resume gets the objects back: two epochs
    then one more equal three at once."""
    pytest.importorskip("galore_torch")
    args = ["--optimizer=galore_torch.GaLoreAdamW",
            "--model.param_groups=[{ndim: 2, rank: 4, update_proj_gap: 2, scale: 0.25, "
            "proj_type: std}]", *tiny_fit_args]  # fmt: skip

    def fit(*more: str) -> str:
        cli_main(["fit", *args, *more])
        return capsys.readouterr().out

    fit("--trainer.max_epochs=3", f"--trainer.default_root_dir={tmp_path / 'once'}")
    once = sorted((tmp_path / "logs").rglob("*.ckpt"))[-1]
    fit("--trainer.max_epochs=2", f"--trainer.default_root_dir={tmp_path / 'twice'}")
    first = next(c for c in (tmp_path / "logs").rglob("*.ckpt") if c != once)
    checkpoint = torch.load(first, weights_only=True)  # data only
    states = checkpoint["optimizer_states"][0]["state"].values()
    assert any(state_data.MARK in s.get("projector", {}) for s in states)
    fit("--trainer.max_epochs=3", f"--ckpt_path={first}")
    resumed = max((tmp_path / "logs").rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    a = torch.load(once, weights_only=True)["state_dict"]
    b = torch.load(resumed, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_a_state_object_of_another_package_is_refused_on_load():
    """A resume builds objects only of classes already imported from the packages of the
    optimizers it trains with: a checkpoint never makes the tool import or run anything."""
    pytest.importorskip("galore_torch")
    from galore_torch.galore_projector import GaLoreProjector

    projector = GaLoreProjector(4)
    data = state_data.as_data({"state": {0: {"projector": projector}}}, {"galore_torch"})
    assert pickle.loads(pickle.dumps(data))  # plain data
    back = state_data.from_data(data, {"galore_torch"})
    assert vars(back["state"][0]["projector"]) == vars(projector)
    for path, owners in (
        ("galore_torch.galore_projector.GaLoreProjector", {"torch"}),
        ("os.system", {"os"}),  # not a class
        ("galore_torch.not_imported.Thing", {"galore_torch"}),
    ):
        forged = {state_data.MARK: path, "fields": {}}
        with pytest.raises(ValueError, match="not a class of the optimizers this run trains"):
            state_data.from_data({"state": {0: {"projector": forged}}}, owners)


def test_a_wrapper_annotated_as_an_optimizer_instance_gets_its_inner_class(tiny_fit_args, capsys):
    """torch-optimizer's Lookahead(optimizer: Optimizer): jsonargparse built the inner class
    without parameters ("the following arguments are required: params"). Now the inner class is
    built over the parameters, and the pre-flight step finds what keeps the class out: torch's
    state_dict() fails on it (it never calls Optimizer.__init__), which every checkpoint needs."""
    pytest.importorskip("torch_optimizer")
    line = _refusal(["--optimizer=torch_optimizer.Lookahead",
                     "--optimizer.optimizer=torch.optim.AdamW", *tiny_fit_args], capsys)  # fmt: skip
    assert line.startswith("lightning_opt: error: Lookahead: its state_dict() round trip failed")
    assert "before anything trained" in line


def _refusal(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", *args])
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_parameters_in_two_arguments_are_routed_by_an_into_rule(tiny_fit_args, capsys):
    """MuonAdamAtan2(muon_params, params, ...): a rule with ``into: muon_params`` sends its
    parameters there (the rest to params); without one, or into an argument the class does not
    have, one line saying what to give."""
    pytest.importorskip("adam_atan2_pytorch")
    from lightning_opt.optim import groups
    from lightning_opt.optim.registry import construct, resolve_optimizer

    net = torch.nn.Sequential(torch.nn.Linear(40, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10))
    rules = groups.check_rules([{"ndim": 2, "into": "muon_params"}])
    cls, resolved = resolve_optimizer("adam_atan2_pytorch.MuonAdamAtan2")
    built = construct(cls, groups.split(net.named_parameters(), rules), resolved["init_args"])
    muon = [g for g in built.param_groups if g["use_muon"]]
    assert [tuple(p.shape) for p in muon[0]["params"]] == [(8, 40), (10, 8)]

    optimizer = "--optimizer=adam_atan2_pytorch.MuonAdamAtan2"
    line = _refusal([optimizer, *tiny_fit_args], capsys)
    assert "MuonAdamAtan2 takes parameters in muon_params, params: give --model.param_groups a " \
           "rule with into: muon_params" in line  # fmt: skip
    rule = "--model.param_groups=[{ndim: 2, into: polar_params}]"
    line = _refusal([optimizer, rule, *tiny_fit_args], capsys)
    assert "into: polar_params is not an argument of MuonAdamAtan2 that takes parameters" in line
    line = _refusal(["--optimizer=adam", rule, *tiny_fit_args], capsys)
    assert "into: polar_params is not an argument of Adam that takes parameters" in line
    cli_main(["fit", optimizer, "--model.param_groups=[{ndim: 2, into: muon_params}]",
              "--seeds=2", *tiny_fit_args])  # fmt: skip
    assert capsys.readouterr().out.count("seed ") == 2


def test_a_default_no_config_can_hold_is_left_to_the_class(tiny_fit_args, tmp_path):
    """MuonAdamAtan2's ``muon_bypass_update_fn=lambda step: False``: jsonargparse filled it in,
    config.yaml held the string "Unable to serialize instance ..." and Lightning dropped the
    whole optimizer from the hyperparameters it could not pickle (a KeyError when logging them,
    and a checkpoint without its optimizer). Now it is not a command-line argument; the class
    applies its own default, and config.yaml replays."""
    pytest.importorskip("adam_atan2_pytorch")
    rule = "--model.param_groups=[{ndim: 2, into: muon_params}]"
    cli_main(["fit", "--optimizer=adam_atan2_pytorch.MuonAdamAtan2", rule, *tiny_fit_args])
    (config,) = tmp_path.glob("logs/**/config.yaml")
    assert "muon_bypass_update_fn" not in config.read_text()
    (checkpoint,) = tmp_path.glob("logs/**/checkpoints/*.ckpt")
    hparams = torch.load(checkpoint, weights_only=False)["hyper_parameters"]
    assert hparams["optimizer"]["class_path"] == "adam_atan2_pytorch.MuonAdamAtan2"
    cli_main(["fit", f"--config={config}", "--trainer.max_epochs=1"])
