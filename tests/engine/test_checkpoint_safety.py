"""No checkpoint runs code: a crafted pickle's payload never runs, whichever way vltool is given the file."""

import os
import pathlib
import subprocess

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner.checkpoint import CheckpointLoader

from tests.engine.train_runs import train_options, vltool_command, write_colour_dataset
from vltool.engine import safe_load
from vltool.engine.checkpoint import RngStateHook, load_pretrained, read_weights
from vltool.errors import ConfigError

NOT_OURS = "not a vltool checkpoint"


class Touch:
    """Unpickling this calls ``Path.touch(marker)``: the file appears if the payload ran."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


class System:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Subclasses:
    """A payload through ``getattr`` (how pickle reaches a method), the way out of a restricted namespace."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, "__subclasses__")


# Python that reaches os.system without an import statement: mmengine's resume would exec it as a config
CONFIG_PAYLOAD = (
    "x = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'catch_warnings'][0]()"
    "._module.__builtins__['__import__']('os').system('touch {marker}')\n"
)


def crafted(path: pathlib.Path, payload: object, zipped: bool = True) -> pathlib.Path:
    """A file shaped like a vltool checkpoint, with ``payload`` where the message hub would be."""
    checkpoint = {"meta": {"epoch": 0, "iter": 2}, "state_dict": {"vlm.projector.w": torch.zeros(1)}, "x": payload}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zipped)
    return path


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "payload_ran"
    yield path
    assert not path.exists(), "the checkpoint's payload ran"


def one_error_line(result: subprocess.CompletedProcess) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return errors[0]


@pytest.mark.parametrize(
    "payload", [Touch, System, "legacy", Subclasses], ids=["path_touch", "os_system", "legacy_format", "getattr"]
)
def test_a_crafted_pretrained_pth_is_refused_before_its_payload_runs(tmp_path, marker, payload):
    if payload == "legacy":  # torch's pre-1.6 format, which torch cannot list without loading
        path = crafted(tmp_path / "evil.pth", Touch(marker), zipped=False)
    else:
        path = crafted(tmp_path / "evil.pth", payload() if payload is Subclasses else payload(marker))
    with pytest.raises(ConfigError) as err:
        load_pretrained(torch.nn.Linear(1, 1), path)
    message = str(err.value)
    assert message.startswith(f"{path}: {NOT_OURS}: it holds ") and "\n" not in message
    assert "nothing in it ran" in message


MODEL_STATES, OPTIM_STATES = "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"


def deepspeed_directory(root: pathlib.Path, payload: object, zipped: bool = True, into: str = OPTIM_STATES):
    """A folder laid out as a ZeRO-2 checkpoint whose file ``into`` holds ``payload``."""
    folder = root / "iter_2.pth"
    folder.mkdir(parents=True)
    for name in (MODEL_STATES, OPTIM_STATES):
        if name == into:
            crafted(folder / name, payload, zipped)
        else:
            torch.save({"module": {}, "ds_version": "0.19.6"}, folder / name)
    return folder


def test_a_crafted_deepspeed_directory_is_refused_naming_the_file(tmp_path, marker):
    folder = deepspeed_directory(tmp_path, System(marker))
    with pytest.raises(ConfigError, match=rf"^{folder}/{OPTIM_STATES}: {NOT_OURS}: it holds posix.system"):
        read_weights(folder)
    # a format torch cannot list: DeepSpeed's own torch.load(weights_only=False) is forced weights-only
    legacy = deepspeed_directory(tmp_path / "legacy", Touch(marker), zipped=False, into=MODEL_STATES)
    with pytest.raises(ConfigError, match=rf"^{legacy}: {NOT_OURS}: it holds pathlib.Path"):
        read_weights(legacy)


def test_loads_asking_for_weights_only_false_are_weights_only_inside_the_block(tmp_path, marker, monkeypatch):
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    monkeypatch.setenv(safe_load.FORCE_NO_WEIGHTS_ONLY, "1")  # not even this reopens it
    path = crafted(tmp_path / "mp_rank_00_model_states.pt", Touch(marker))
    with pytest.raises(ConfigError, match=f"{NOT_OURS}: it holds pathlib.Path"):
        with safe_load.weights_only_loading(path):
            TorchCheckpointEngine().load(str(path), map_location="cpu")  # torch.load(..., weights_only=False)
    assert os.environ[safe_load.FORCE_NO_WEIGHTS_ONLY] == "1" and safe_load.FORCE_WEIGHTS_ONLY not in os.environ
    assert safe_load.checkpoint_globals()[0] not in torch.serialization.get_safe_globals()  # scoped, not global


def test_what_vltool_checkpoints_hold_loads_weights_only(tmp_path):
    hub = MessageHub.get_instance("checkpoint-safety")
    for step in range(3):
        hub.update_scalar("train/loss", 1.0 / (step + 1))
    hub.update_info("eta", np.float64(12.5))
    checkpoint = {
        "meta": {"epoch": 0, "iter": 3, "cfg": "model = dict()", "seed": 0},
        "state_dict": {"vlm.projector.w": torch.ones(2)},
        "message_hub": hub.state_dict(),
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(2), "step": torch.tensor(3.0)}}, "param_groups": []},
        "param_schedulers": [{"base_values": [0.001], "last_step": 2}],
        "rng_states": [RngStateHook._capture()],
    }
    torch.save(checkpoint, tmp_path / "iter_3.pth")
    loaded = safe_load.load_from_local(str(tmp_path / "iter_3.pth"))
    buffer = loaded["message_hub"]["log_scalars"]["train/loss"]
    assert type(buffer) is HistoryBuffer and buffer.statistics("mean") == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert loaded["message_hub"]["runtime_info"]["eta"] == 12.5
    np.testing.assert_array_equal(loaded["rng_states"][0]["numpy"][1], checkpoint["rng_states"][0]["numpy"][1])
    assert torch.equal(loaded["rng_states"][0]["torch"], checkpoint["rng_states"][0]["torch"])


def test_a_history_buffer_cannot_register_methods_for_the_process(tmp_path):
    # mmengine pickles the class-wide table of statistics with every buffer and, loading, copies it back
    HistoryBuffer._statistics_methods["crafted"] = HistoryBuffer.min
    try:
        torch.save({"message_hub": HistoryBuffer([1.0, 2.0], [1, 1])}, tmp_path / "hub.pth")
    finally:
        del HistoryBuffer._statistics_methods["crafted"]
    loaded = safe_load.load_file(tmp_path / "hub.pth")
    assert type(loaded["message_hub"]) is HistoryBuffer and loaded["message_hub"].max() == 2.0
    assert "crafted" not in HistoryBuffer._statistics_methods


def test_a_resume_checkpoint_with_config_code_is_refused(tmp_path, marker):
    path = tmp_path / "iter_2.pth"
    torch.save({"meta": {"epoch": 0, "iter": 2, "config": CONFIG_PAYLOAD.format(marker=marker)}}, path)
    with pytest.raises(ConfigError, match=rf"^{path}: {NOT_OURS}: its meta\['config'\] is Python"):
        safe_load.load_from_local(str(path))


def test_remote_checkpoints_are_refused_without_a_download():
    with pytest.raises(ConfigError, match="vltool loads checkpoints from local files only"):
        CheckpointLoader.load_checkpoint("https://example.com/evil.pth")


@pytest.fixture(scope="module")
def colours(module_tmp):
    return write_colour_dataset(module_tmp("colours"), samples=6)


DOORS = ["pretrained_pth", "resume", "load_from", "convert", "resume_config_code", "deepspeed_resume"]


@pytest.mark.slow
@pytest.mark.parametrize("door", DOORS)
def test_the_cli_refuses_a_crafted_checkpoint_in_one_line(tmp_path, marker, colours, door):
    evil = crafted(tmp_path / "evil.pth", Touch(marker))
    if door == "resume_config_code":
        torch.save({"meta": {"epoch": 0, "iter": 1, "config": CONFIG_PAYLOAD.format(marker=marker)}}, evil)
    if door == "deepspeed_resume":
        evil = deepspeed_directory(tmp_path, System(marker))
    train = ["train", "demo", "--work-dir", str(tmp_path / "work")]
    options = train_options(colours, 1, 2, "custom_hooks=[]")
    command = {
        "pretrained_pth": [*train, *options, f"pretrained_pth={evil}"],
        "resume": [*train, "--resume", str(evil), *options],
        "load_from": [*train, *options, f"load_from={evil}"],
        "convert": ["convert", "pth_to_hf", "demo", str(evil), str(tmp_path / "out")],
        "resume_config_code": [*train, "--resume", str(evil), *options],
        "deepspeed_resume": [*train, "--deepspeed", "zero2", "--resume", str(evil), *options],
    }[door]
    # torch's switch for turning weights-only loading off where a caller did not ask for it opens nothing either
    env = {**os.environ, safe_load.FORCE_NO_WEIGHTS_ONLY: "1"}
    result = subprocess.run(vltool_command(*command), capture_output=True, text=True, env=env, timeout=600)
    line = one_error_line(result)
    assert NOT_OURS in line, line
    if door == "deepspeed_resume":
        assert f"{evil}/{OPTIM_STATES}: {NOT_OURS}" in line
    else:
        assert f"{evil}: {NOT_OURS}" in line
    assert not (tmp_path / "out").exists()
