"""Launched runs: the same run on several processes, GPUs or machines, through accelerate.

``Session.train(..., processes=N)`` (and ``machines=M``, ``fsdp=True``, or an
``accelerate_config=`` file) starts the run under ``accelerate launch`` as a child process
group; the notebook's :class:`~workbench.train.run.Run` follows it from the files rank 0
writes, so the TrainingMonitor, the controls and ``wait()`` work as for a run in one process.

- :mod:`~workbench.train.launch.spec`: :class:`LaunchSpec`, its checks and accelerate configs.
- :mod:`~workbench.train.launch.rank`: the program each rank runs.
- :mod:`~workbench.train.launch.loop`: :class:`RankLoop`, one rank's share of each step.
- :mod:`~workbench.train.launch.control`: the control file from the notebook to rank 0.
- :mod:`~workbench.train.launch.follow`: :class:`LaunchedWorker`, the notebook's side.

Examples:
    >>> LaunchSpec(processes=2, machines=2).world_size
    4
"""

from workbench.train.launch.spec import LaunchSpec

__all__ = ["LaunchSpec"]
