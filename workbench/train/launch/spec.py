"""Where a launched run trains: how many processes and machines, and the accelerate configs.

:class:`LaunchSpec` is the part of ``Session.train(..., processes=N, machines=M, fsdp=...)``
that says where the steps run, not how they train (that is the :class:`TrainSpec`, the same
for any process count: the global batch does not change). It is checked before anything
starts, then written as one accelerate config per machine under ``<run>/launch/``, with the
command each machine runs.

Examples:
    >>> spec = LaunchSpec(processes=2, main_port=29555)
    >>> spec.world_size, spec.machines
    (2, 1)
    >>> LaunchSpec(processes=2, machines=2, main_port=29555).world_size
    4
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

from workbench._numbers import plain_fields
from workbench.errors import SpecError

__all__ = [
    "LAUNCH_FOLDER",
    "LAUNCH_OPTIONS",
    "LaunchSpec",
    "free_port",
    "launch_from_settings",
    "rank_command",
    "resume_launch",
]

LAUNCH_FOLDER = "launch"  # <run>/launch/machine-<k>.yaml: the accelerate config of machine k
RANK_MODULE = "workbench.train.launch.rank"
# The keywords of Session.train()/resume() that say where a run trains (a LaunchSpec's fields).
LAUNCH_OPTIONS = ("processes", "machines", "main_address", "main_port", "fsdp", "accelerate_config")


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (for the rendezvous of the ranks).

    Examples:
        >>> 1024 <= free_port() <= 65535
        True
    """
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _port_free(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclasses.dataclass(frozen=True)
class LaunchSpec:
    """Processes, machines and back end of a launched run (see :meth:`Session.train`).

    Args:
        processes: Training processes on each machine: one per GPU, or any number on CPU
            (gloo, to try the path; it is not faster than one process there).
        machines: Machines taking part. The notebook's machine is machine 0 and trains its
            share; each other machine runs the command :meth:`commands` gives, with the run
            folder at the same path (a shared disk).
        main_address: Address the other machines reach machine 0 at.
        main_port: Port of the rendezvous on machine 0 (``None``: a free one).
        fsdp: Shard the model across the processes (FSDP2, one unit per decoder layer)
            instead of copying it (DDP): for a model too big for one GPU. It works on CPU too
            (gloo), to try the path; see :mod:`~workbench.train.launch.sharded`.
        accelerate_config: An accelerate config file of your own to launch with instead;
            ``processes`` and ``machines`` then come from it.
        cpu: Train on CPU over gloo (default: when there is no GPU).

    Examples:
        >>> LaunchSpec(processes=0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: processes=0 must be a positive int (training processes ...
    """

    processes: int = 1
    machines: int = 1
    main_address: str = "127.0.0.1"
    main_port: int | None = None
    fsdp: bool = False
    accelerate_config: str | None = None
    cpu: bool | None = None

    def __post_init__(self) -> None:
        plain_fields(self)  # processes=np.int64(2) from a sweep: an int, as run.json needs
        for name, what in (
            ("processes", "training processes per machine"),
            ("machines", "machines taking part"),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(f"{name}={value!r} must be a positive int ({what}).")
        port = self.main_port
        if port is not None and (
            not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535
        ):
            raise SpecError(f"main_port={port!r} must be a TCP port (1-65535) or None.")
        if not isinstance(self.fsdp, bool):
            raise SpecError(f"fsdp={self.fsdp!r} must be True or False.")
        if self.accelerate_config is not None and not Path(self.accelerate_config).is_file():
            raise SpecError(
                f"accelerate_config={self.accelerate_config!r}: no such file. Write one with "
                "`accelerate config`, or leave it out to launch with processes=/machines=."
            )

    @property
    def world_size(self) -> int:
        """Processes in all (``processes * machines``).

        Examples:
            >>> LaunchSpec(processes=3).world_size
            3
        """
        return self.processes * self.machines

    @property
    def on_cpu(self) -> bool:
        """Whether the ranks train on CPU (gloo): asked for, or no GPU here.

        Examples:
            >>> LaunchSpec(cpu=True).on_cpu
            True
        """
        return bool(self.cpu) if self.cpu is not None else _cuda_count() == 0

    def checked(self) -> LaunchSpec:
        """This spec with a port chosen, after checking what can be checked on this machine.

        Raises:
            SpecError: more GPU processes than GPUs, or the port in use.

        Examples:
            >>> spec = LaunchSpec(processes=2, cpu=True).checked()
            >>> spec.main_port is not None
            True
        """
        gpus = 0 if self.on_cpu else _cuda_count()
        if not self.on_cpu and self.processes > gpus:
            raise SpecError(
                f"processes={self.processes} but this machine has {gpus} GPU(s): one process "
                f"per GPU, so processes={gpus} at most (or cpu=True to try the path on CPU)."
            )
        port = self.main_port
        if port is None:
            port = free_port("127.0.0.1" if self._main_is_local() else "")
        elif self._main_is_local() and not _port_free(self.main_address, port):
            raise SpecError(
                f"main_port={port} on {self.main_address} is in use (another run or "
                "program listens there): pass another main_port, or leave it out to pick a "
                "free one."
            )
        return dataclasses.replace(self, main_port=port)

    def _main_is_local(self) -> bool:
        return self.main_address in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "")

    def to_dict(self) -> dict[str, Any]:
        """Plain values for ``run.json``.

        Examples:
            >>> LaunchSpec(processes=2).to_dict()["processes"]
            2
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LaunchSpec:
        """Back from :meth:`to_dict`.

        Examples:
            >>> LaunchSpec.from_dict(LaunchSpec(processes=2).to_dict()).processes
            2
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    # -- accelerate configs and commands --------------------------------------------------
    def accelerate_settings(self, machine_rank: int) -> dict:
        """The accelerate config of machine ``machine_rank`` (written as YAML).

        The same with ``fsdp`` or without: accelerate only starts the processes (torchrun),
        and with ``fsdp=True`` the ranks shard the model themselves with FSDP2's
        ``fully_shard`` (:mod:`~workbench.train.launch.sharded`). Not accelerate's FSDP
        plugin: it engages only on GPUs (an FSDP config on a CPU machine gives no
        distribution at all), and one path that CI runs on CPU beats one that only a GPU
        machine would ever test.

        Examples:
            >>> cfg = LaunchSpec(processes=2, machines=2, main_port=29555).accelerate_settings(1)
            >>> cfg["num_processes"], cfg["num_machines"], cfg["machine_rank"]
            (4, 2, 1)
            >>> LaunchSpec(processes=2, fsdp=True).accelerate_settings(0)["distributed_type"]
            'MULTI_GPU'
        """
        config: dict[str, Any] = {
            "compute_environment": "LOCAL_MACHINE",
            # torchrun starts the processes in every case; the ranks pick gloo on CPU, and
            # shard the model themselves when fsdp=True.
            "distributed_type": "MULTI_GPU",
            "num_machines": self.machines,
            "machine_rank": machine_rank,
            "num_processes": self.world_size,
            "main_process_ip": self.main_address,
            "main_process_port": self.main_port,
            "mixed_precision": "no",  # the dtype is the model's, as in one process
            "dynamo_config": {"dynamo_backend": "NO"},
            "use_cpu": False,
            "same_network": True,
            "rdzv_backend": "static",
            "gpu_ids": "all",
        }
        return config

    def write_configs(self, run_dir: Path) -> list[Path]:
        """Write ``<run>/launch/machine-<k>.yaml`` for every machine; their paths.

        With :attr:`accelerate_config` given, that file is copied as every machine's config.

        Examples:
            >>> import tempfile
            >>> run_dir = Path(tempfile.mkdtemp())
            >>> paths = LaunchSpec(processes=1, machines=2, main_port=29555).write_configs(run_dir)
            >>> [p.name for p in paths]
            ['machine-0.yaml', 'machine-1.yaml']
        """
        import yaml

        from workbench._io import atomic_write_text

        folder = run_dir / LAUNCH_FOLDER
        paths = []
        for k in range(self.machines):
            if self.accelerate_config is not None:
                text = Path(self.accelerate_config).read_text()
            else:
                text = yaml.safe_dump(self.accelerate_settings(k), sort_keys=False)
            paths.append(atomic_write_text(folder / f"machine-{k}.yaml", text))
        return paths

    def commands(self, run_dir: Path) -> list[str]:
        """The shell command each machine runs (machine 0's is started by the notebook).

        Examples:
            >>> spec = LaunchSpec(machines=2, main_port=29555)
            >>> spec.commands(Path("/runs/run-001"))[1].split()[-4:-1]
            ['/runs/run-001/launch/machine-1.yaml', '-m', 'workbench.train.launch.rank']
        """
        return [shlex.join(rank_command(run_dir, k)) for k in range(self.machines)]


TRUST_VARIABLE = "WORKBENCH_TRUST_REMOTE_CODE"
"""Set to ``1`` in a rank's environment when the caller allowed the base's shipped code: the
ranks read everything else from ``run.json``, but not that."""


def rank_command(run_dir: Path, machine_rank: int) -> list[str]:
    """``accelerate launch`` of the rank program on machine ``machine_rank``, as argv.

    Examples:
        >>> rank_command(Path("/r"), 0)[-3:]
        ['-m', 'workbench.train.launch.rank', '/r']
    """
    config = run_dir / LAUNCH_FOLDER / f"machine-{machine_rank}.yaml"
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "-m",
        RANK_MODULE,
        str(run_dir),
    ]


def rank_environment(
    follower_pid: int | None = None, trust_remote_code: bool = False
) -> dict[str, str]:
    """The environment the ranks start in: this one, offline, one thread per process on CPU
    unless set, the pid of the notebook following them (they stop if it dies), and
    :data:`TRUST_VARIABLE` only where the caller let the base run its shipped code.

    Examples:
        >>> rank_environment(123)["WORKBENCH_FOLLOWER_PID"]
        '123'
        >>> TRUST_VARIABLE in rank_environment(), rank_environment(trust_remote_code=True)[
        ...     TRUST_VARIABLE]
        (False, '1')
    """
    env = dict(os.environ)
    env.pop(TRUST_VARIABLE, None)
    if trust_remote_code:
        env[TRUST_VARIABLE] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if follower_pid is not None:
        env["WORKBENCH_FOLLOWER_PID"] = str(follower_pid)
    root = str(Path(__file__).resolve().parents[3])  # the workbench, for `-m` in the ranks
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    return env


def launch_from_settings(settings: dict[str, Any]) -> LaunchSpec | None:
    """Take the launch keywords out of ``settings``: a LaunchSpec, or ``None`` for one process.

    ``Session.train(**settings)`` passes what is left to its :class:`TrainSpec`.

    Examples:
        >>> settings = {"lr": 1e-3, "processes": 2}
        >>> launch_from_settings(settings).processes, settings
        (2, {'lr': 0.001})
        >>> launch_from_settings({"processes": 1}) is None
        True
    """
    options = {k: settings.pop(k) for k in LAUNCH_OPTIONS if k in settings}
    if not options:
        return None
    launch = LaunchSpec(**options)
    alone = launch.world_size == 1 and not launch.fsdp and launch.accelerate_config is None
    return None if alone else launch


def resume_launch(options: dict[str, Any]) -> LaunchSpec | None:
    """The LaunchSpec of ``Session.resume(folder, processes=...)``; other keywords are refused.

    Examples:
        >>> resume_launch({"processes": 2}).processes
        2
        >>> resume_launch({"lr": 1e-3})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: resume() takes no lr=...: a run resumes with its own ...
    """
    launch = launch_from_settings(options)
    if options:
        names = ", ".join(f"{k}=" for k in options)
        raise SpecError(
            f"resume() takes no {names}: a run resumes with its own settings (fork a run "
            f"to change them). It takes where to train: {', '.join(LAUNCH_OPTIONS)}."
        )
    return launch
