"""A throw-away one-node SLURM cluster on this machine, for testing the SLURM executor profile.

``SlurmCluster`` writes ``/etc/slurm/slurm.conf`` (any existing file is backed up and restored
afterwards), starts ``munged`` (as user ``munge``, on a private socket), ``slurmctld`` and
``slurmd`` with their state, spool, log and pid files in a temporary folder, waits until
``sinfo`` shows the node idle, and on exit cancels all jobs and stops the daemons by their pid
files. Needs root and the Debian packages ``slurm-wlm`` and ``munge``
(``scripts/install_slurm.sh``).

The configuration must live at the default path: inside a job the SLURM job-step executor
removes ``SLURM_*`` variables from the environment, ``SLURM_CONF`` included, so ``srun`` there
only finds the default file.

    with SlurmCluster() as cluster:
        subprocess.run(["srun", "hostname"], check=True)
        print(cluster.log_tail())
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

SLURM_CONF = Path("/etc/slurm/slurm.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")
PARTITION = "debug"
# First line of every slurm.conf this helper writes: lets a later run recognise a file left
# behind by a run that was killed before it could restore the original.
MARKER = "# Written by medgen tests/slurm_cluster.py: a temporary one-node test cluster."
BACKUP = SLURM_CONF.with_name("slurm.conf.medgen-backup")
REQUIRED_COMMANDS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel", "runuser")


def missing_requirements() -> str | None:
    """Why a test cluster cannot start here (not root, commands missing), or None if it can."""
    if os.name != "posix" or os.geteuid() != 0:
        return "starting a SLURM cluster needs root"
    missing = [cmd for cmd in REQUIRED_COMMANDS if shutil.which(cmd) is None]
    if missing:
        return f"SLURM/MUNGE not installed (missing {', '.join(missing)}; run scripts/install_slurm.sh)"
    return None


def _total_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("MemTotal not found in /proc/meminfo")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SlurmCluster:
    """A one-node SLURM cluster (partition ``debug``) that lives for a ``with`` block."""

    def __init__(self, cpus: int | None = None, memory_mb: int | None = None, start_timeout: float = 60.0) -> None:
        self.node = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        # Leave some memory to the operating system; slurmd refuses a node that claims more than it has.
        self.memory_mb = memory_mb or max(1000, int(_total_memory_mb() * 0.9))
        self.start_timeout = start_timeout
        self.root: Path | None = None
        self._started: list[tuple[str, Path]] = []  # (daemon, pid file), in start order

    # ----------------------------------------------------------------- paths
    def _path(self, *parts: str) -> Path:
        assert self.root is not None, "cluster not started"
        return self.root.joinpath(*parts)

    @property
    def slurmctld_log(self) -> Path:
        return self._path("log", "slurmctld.log")

    @property
    def slurmd_log(self) -> Path:
        return self._path("log", "slurmd.log")

    @property
    def munge_socket(self) -> Path:
        return self._path("munge", "munge.socket.2")

    # ------------------------------------------------------------- lifecycle
    def __enter__(self) -> "SlurmCluster":
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        reason = missing_requirements()
        if reason:
            raise RuntimeError(reason)
        self.root = Path(tempfile.mkdtemp(prefix="medgen-slurm-"))
        try:
            self.root.chmod(0o755)  # the munge user must reach its socket folder
            for sub in ("state", "spool", "log", "run"):
                self._path(sub).mkdir()
            self._install_config()
            self._start_munged()
            self._start_daemon("slurmctld", ["slurmctld"], self._path("run", "slurmctld.pid"))
            self._start_daemon("slurmd", ["slurmd"], self._path("run", "slurmd.pid"))
            self._wait_until_idle()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Cancel every job, stop the daemons (newest first) and restore the original slurm.conf."""
        try:
            if any(name == "slurmctld" for name, _ in self._started):
                self._cancel_all_jobs()
            for name, pid_file in reversed(self._started):
                self._stop_daemon(name, pid_file)
            self._started.clear()
        finally:
            self._restore_config()
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None

    # ---------------------------------------------------------------- config
    def _config_text(self) -> str:
        ctld_port, d_port = _free_port(), _free_port()
        return "\n".join([
            MARKER,
            "ClusterName=medgentest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={d_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SwitchType=switch/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=1",
            "MinJobAge=300",  # finished jobs stay visible to `squeue --states=all` (the status query)
            "KillWait=5",
            "InactiveLimit=0",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            f"StateSaveLocation={self._path('state')}",
            f"SlurmdSpoolDir={self._path('spool')}",
            f"SlurmctldLogFile={self.slurmctld_log}",
            f"SlurmdLogFile={self.slurmd_log}",
            f"SlurmctldPidFile={self._path('run', 'slurmctld.pid')}",
            f"SlurmdPidFile={self._path('run', 'slurmd.pid')}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    def _install_config(self) -> None:
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        if BACKUP.exists() and self._is_ours(SLURM_CONF):
            # A previous run was killed before restoring the original: restore it first.
            os.replace(BACKUP, SLURM_CONF)
        if SLURM_CONF.exists() and not self._is_ours(SLURM_CONF):
            os.replace(SLURM_CONF, BACKUP)
        SLURM_CONF.write_text(self._config_text())
        SLURM_CONF.chmod(0o644)

    @staticmethod
    def _is_ours(path: Path) -> bool:
        try:
            with path.open() as fh:
                return fh.readline().rstrip("\n") == MARKER
        except OSError:
            return False

    @classmethod
    def _restore_config(cls) -> None:
        if cls._is_ours(SLURM_CONF):
            SLURM_CONF.unlink()
        if BACKUP.exists() and not SLURM_CONF.exists():
            os.replace(BACKUP, SLURM_CONF)

    # --------------------------------------------------------------- daemons
    def _start_munged(self) -> None:
        if not MUNGE_KEY.exists():
            MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mungekey", "--create", "--keyfile", str(MUNGE_KEY)], check=True, capture_output=True)
            shutil.chown(MUNGE_KEY, "munge", "munge")
            MUNGE_KEY.chmod(0o600)
        munge_dir = self._path("munge")
        munge_dir.mkdir(mode=0o755)
        shutil.chown(munge_dir, "munge", "munge")
        pid_file = munge_dir / "munged.pid"
        cmd = ["runuser", "-u", "munge", "--", "munged",
               f"--socket={self.munge_socket}", f"--key-file={MUNGE_KEY}", f"--pid-file={pid_file}",
               f"--log-file={munge_dir / 'munged.log'}", f"--seed-file={munge_dir / 'munged.seed'}"]
        self._start_daemon("munged", cmd, pid_file)

    def _start_daemon(self, name: str, cmd: list[str], pid_file: Path) -> None:
        """Run a self-daemonising command and wait for its pid file."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30)
        if res.returncode != 0:
            raise RuntimeError(f"{name} failed to start ({res.returncode}): {res.stderr.strip()}\n{self.log_tail()}")
        self._started.append((name, pid_file))
        deadline = time.monotonic() + self.start_timeout
        while _read_pid(pid_file) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} wrote no pid file {pid_file}\n{self.log_tail()}")
            time.sleep(0.1)

    def _stop_daemon(self, name: str, pid_file: Path, timeout: float = 15.0) -> None:
        pid = _read_pid(pid_file)
        if pid is None or not _alive(pid):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)

    def _wait_until_idle(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        state = ""
        while time.monotonic() < deadline:
            res = subprocess.run(["sinfo", "-h", "-N", "-n", self.node, "-o", "%T"], capture_output=True, text=True)
            state = res.stdout.strip()
            if res.returncode == 0 and state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"node {self.node} not idle after {self.start_timeout:.0f} s (state {state!r})\n{self.log_tail()}")

    def _cancel_all_jobs(self, timeout: float = 20.0) -> None:
        """Cancel whatever is still queued or running (e.g. after a failed workflow) and wait."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True)
            ids = res.stdout.split()
            if res.returncode != 0 or not ids:
                return
            subprocess.run(["scancel", *ids], capture_output=True)
            time.sleep(0.5)

    # ------------------------------------------------------------ inspection
    def daemon_pids(self) -> list[int]:
        """Process ids of the daemons this cluster started (munged, slurmctld, slurmd)."""
        return [pid for _, pid_file in self._started if (pid := _read_pid(pid_file)) is not None]

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the slurmctld and slurmd logs, for error messages."""
        if self.root is None:
            return ""
        parts = []
        for log in (self.slurmctld_log, self.slurmd_log, self._path("munge", "munged.log")):
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(parts)


def _read_pid(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap if it happens to be our child
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); treat it as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
