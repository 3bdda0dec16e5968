"""Launching: the torchrun relaunch command, srun's environment, the launcher choice, and the CLI's errors."""

import os
import socket
import subprocess
import sys

import pytest

from vltool.engine import launch
from vltool.engine.launch import free_port, resolve_launcher, slurm_environment, torchrun_command
from vltool.errors import ConfigError

ARGV = ["train", "demo", "--cfg-options", "train_cfg.max_iters=2"]
TORCHRUN_VARIABLES = ("LOCAL_RANK", "WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def outside_torchrun(monkeypatch):
    """Every test starts as a plain process, even when pytest itself runs under torchrun."""
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def flags(command):
    """``--name=value`` arguments of a torchrun command as a dict."""
    return dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


# ---------------- torchrun_command ----------------


def test_nproc_alone_runs_one_node_on_a_free_port():
    command = torchrun_command(ARGV, {"NPROC_PER_NODE": "4"})
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    options = flags(command)
    assert options["nproc_per_node"] == "4"
    assert options["nnodes"] == "1"
    assert options["node_rank"] == "0"
    assert options["master_addr"] == "127.0.0.1"
    assert 0 < int(options["master_port"]) < 65536
    # torchrun reruns the same vltool command line as a module
    assert command[-len(ARGV) - 2 :] == ["-m", "vltool.cli.app", *ARGV]


def test_single_node_ports_are_picked_per_run(monkeypatch):
    ports = iter([29611, 29612])
    monkeypatch.setattr(launch, "free_port", lambda: next(ports))
    first = flags(torchrun_command(ARGV, {"NPROC_PER_NODE": "2"}))
    second = flags(torchrun_command(ARGV, {"NPROC_PER_NODE": "2"}))
    assert (first["master_port"], second["master_port"]) == ("29611", "29612")


def test_multi_node_variables_are_passed_through():
    env = {"NPROC_PER_NODE": "8", "NNODES": "2", "NODE_RANK": "1", "ADDR": "10.0.0.5", "PORT": "29555"}
    options = flags(torchrun_command(ARGV, env))
    assert options == {
        "nproc_per_node": "8",
        "nnodes": "2",
        "node_rank": "1",
        "master_addr": "10.0.0.5",
        "master_port": "29555",
    }


def test_single_node_keeps_a_given_port():
    options = flags(torchrun_command(ARGV, {"NPROC_PER_NODE": "2", "PORT": "29777"}))
    assert options["master_port"] == "29777"


@pytest.mark.parametrize("given", [{"ADDR": "10.0.0.5"}, {"PORT": "29555"}, {}])
def test_multi_node_needs_addr_and_port(given):
    with pytest.raises(ConfigError) as err:
        torchrun_command(ARGV, {"NPROC_PER_NODE": "8", "NNODES": "2", "NODE_RANK": "0", **given})
    assert "ADDR" in str(err.value) and "PORT" in str(err.value)


@pytest.mark.parametrize("value", ["abc", "0", "-1", "2.5", ""])
def test_nproc_must_be_a_positive_integer(value):
    with pytest.raises(ConfigError) as err:
        torchrun_command(ARGV, {"NPROC_PER_NODE": value})
    assert f"NPROC_PER_NODE={value!r} must be a positive integer" in str(err.value)


@pytest.mark.parametrize(("name", "value"), [("NNODES", "two"), ("NNODES", "0"), ("NODE_RANK", "-1")])
def test_other_counts_are_checked_too(name, value):
    env = {"NPROC_PER_NODE": "2", "ADDR": "10.0.0.5", "PORT": "29555", name: value}
    with pytest.raises(ConfigError, match=f"{name}='{value}'"):
        torchrun_command(ARGV, env)


def test_node_rank_zero_is_allowed():
    options = flags(torchrun_command(ARGV, {"NPROC_PER_NODE": "2", "NODE_RANK": "0"}))
    assert options["node_rank"] == "0"


def test_no_relaunch_without_nproc():
    assert torchrun_command(ARGV, {"NNODES": "2", "ADDR": "10.0.0.5", "PORT": "29555"}) is None


def test_no_relaunch_when_already_under_torchrun(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    # the children torchrun starts inherit NPROC_PER_NODE: they must not relaunch again
    assert torchrun_command(ARGV, {"NPROC_PER_NODE": "2"}) is None


def test_one_torchrun_variable_is_not_torchrun(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert torchrun_command(ARGV, {"NPROC_PER_NODE": "2"}) is not None


# ---------------- free_port ----------------


def test_free_port_can_be_bound():
    port = free_port()
    assert 1024 <= port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


# ---------------- slurm_environment ----------------

SRUN = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_NODELIST": "gpu[01-02]"}


class FakeScontrol:
    """Stands in for ``subprocess.run`` and records the command it was given."""

    def __init__(self, stdout, returncode=0):
        self.stdout, self.returncode, self.commands = stdout, returncode, []

    def __call__(self, command, **kwargs):
        self.commands.append(command)
        return subprocess.CompletedProcess(command, self.returncode, stdout=self.stdout, stderr="")


def test_slurm_maps_srun_variables_and_asks_scontrol_for_the_first_host(monkeypatch):
    scontrol = FakeScontrol("gpu01\ngpu02\n")
    monkeypatch.setattr(launch.subprocess, "run", scontrol)
    assert slurm_environment(SRUN) == {
        "RANK": "5",
        "WORLD_SIZE": "16",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu01",
        "MASTER_PORT": "29500",
    }
    assert scontrol.commands == [["scontrol", "show", "hostname", "gpu[01-02]"]]


def test_slurm_master_addr_and_port_from_the_environment(monkeypatch):
    scontrol = FakeScontrol("gpu01\n")
    monkeypatch.setattr(launch.subprocess, "run", scontrol)
    env = slurm_environment({**SRUN, "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "29123"})
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.1.2.3", "29123")
    assert scontrol.commands == []  # MASTER_ADDR given: no need to ask slurm
    assert slurm_environment({**SRUN, "MASTER_ADDR": "h", "MASTER_PORT": "1", "PORT": "2"})["MASTER_PORT"] == "2"


def test_slurm_local_rank_defaults_to_zero():
    env = {k: v for k, v in SRUN.items() if k != "SLURM_LOCALID"}
    assert slurm_environment({**env, "MASTER_ADDR": "h"})["LOCAL_RANK"] == "0"


def test_slurm_falls_back_to_localhost_when_scontrol_fails(monkeypatch):
    monkeypatch.setattr(launch.subprocess, "run", FakeScontrol("", returncode=1))
    assert slurm_environment(SRUN)["MASTER_ADDR"] == "127.0.0.1"


def test_slurm_without_scontrol_installed(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no scontrol
    assert slurm_environment(SRUN)["MASTER_ADDR"] == "127.0.0.1"


def test_slurm_outside_srun_names_the_missing_variables():
    with pytest.raises(ConfigError) as err:
        slurm_environment({"SLURM_PROCID": "0", "MASTER_ADDR": "h"})
    message = str(err.value)
    assert "SLURM_NTASKS" in message and "SLURM_NODELIST" in message
    assert "SLURM_PROCID" not in message
    assert "srun" in message


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"NPROC_PER_NODE": "2", "NNODES": "2", "NODE_RANK": "2", "ADDR": "h", "PORT": "29500"}, "NODE_RANK=2"),
        ({"NPROC_PER_NODE": "2", "PORT": "http"}, "PORT='http'"),
        ({"NPROC_PER_NODE": "2", "NNODES": "2", "ADDR": "h", "PORT": ""}, "ADDR"),
    ],
)
def test_inconsistent_node_settings_are_refused(env, named):
    with pytest.raises(ConfigError, match=named):
        torchrun_command(["train", "demo"], env)


# ---------------- resolve_launcher ----------------


def test_default_launcher_outside_torchrun():
    assert resolve_launcher(None) == "none"


def test_default_launcher_under_torchrun(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resolve_launcher(None) == "pytorch"


@pytest.mark.parametrize("name", ["none", "pytorch", "slurm"])
def test_explicit_launcher_is_kept(name):
    assert resolve_launcher(name) == name


def test_unknown_launcher_lists_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        resolve_launcher("mpi")
    assert "'mpi'" in str(err.value)
    assert all(name in str(err.value) for name in ("none", "pytorch", "slurm"))


# ---------------- the CLI ----------------


def test_cli_bad_nproc_is_one_line_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env["NPROC_PER_NODE"] = "abc"
    result = subprocess.run(
        [sys.executable, "-m", "vltool.cli.app", "train", "demo"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: NPROC_PER_NODE='abc' must be a positive integer")
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())  # nothing ran: no data, no work dir
