"""A real single-node SLURM on this machine, for tests: munge + slurmctld + slurmd on localhost.

Debian's ``slurm-wlm`` and ``munge`` (installed with apt when missing; needs root). The cluster is
private: its ``slurm.conf``, state, spool and logs live in one directory, its daemons listen on
free ports, and clients find it through ``SLURM_CONF`` (so ``/etc/slurm`` is never touched). The
daemons run in the foreground as our children and are killed by :meth:`SlurmCluster.stop`;
``munged`` is started only if none answers, and then stopped too.

    cluster = SlurmCluster.start(Path("/tmp/slurm"))
    subprocess.run(["sbatch", "--wait", "job.sh"], env=cluster.env())
    cluster.stop()
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

APT_PACKAGES = ("slurm-wlm", "munge")


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be installed or started here (not root, no apt-get): tests skip."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sh(cmd: list[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def ensure_installed() -> None:
    """Install slurm-wlm and munge with apt if ``slurmctld`` is missing (root only)."""
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable("SLURM is not installed and we are not root (apt-get install slurm-wlm munge)")
    if not shutil.which("apt-get"):
        raise SlurmUnavailable("SLURM is not installed and there is no apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _sh(["apt-get", "update", "-qq"], timeout=300, env=env)
    proc = _sh(["apt-get", "install", "-y", "-qq", *APT_PACKAGES], timeout=600, env=env)
    if proc.returncode != 0 or not shutil.which("slurmctld"):
        raise SlurmUnavailable(f"apt-get install {' '.join(APT_PACKAGES)} failed: {proc.stderr[-500:]}")


def _munge_works() -> bool:
    try:
        enc = _sh(["munge", "-n"], timeout=10)
        return enc.returncode == 0 and _sh(["unmunge"], input=enc.stdout, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _start_munge() -> int | None:
    """Make ``munge -n | unmunge`` work; return the pid of a munged we started (None if one ran)."""
    if _munge_works():
        return None
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    proc = _sh(["runuser", "-u", "munge", "--", "munged", "--force"], timeout=30)
    if proc.returncode != 0:
        proc = _sh(["munged", "--force"], timeout=30)
    for _ in range(50):
        if _munge_works():
            pidfile = Path("/run/munge/munged.pid")
            return int(pidfile.read_text()) if pidfile.exists() else None
        time.sleep(0.1)
    raise SlurmUnavailable(f"munged did not start: {proc.stderr[-300:]}")


def _node_line() -> str:
    """``NodeName=<host> CPUs=.. RealMemory=..`` as ``slurmd -C`` prints it (first line)."""
    out = _sh(["slurmd", "-C"]).stdout.splitlines()
    line = next((ln for ln in out if ln.startswith("NodeName=")), None)
    if line is None:
        raise SlurmUnavailable("slurmd -C printed no NodeName line")
    host = socket.gethostname().split(".")[0]
    return " ".join([f"NodeName={host}", *line.split()[1:]])


@dataclass
class SlurmCluster:
    """A running private cluster: its config file and the daemons we own."""

    root: Path
    conf: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    munged_pid: int | None = None

    def env(self, **extra: str) -> dict[str, str]:
        """``os.environ`` plus ``SLURM_CONF`` pointing at this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf), **extra}

    @classmethod
    def start(cls, root: Path, timeout: float = 60) -> "SlurmCluster":
        if os.geteuid() != 0:
            raise SlurmUnavailable("starting slurmctld/slurmd needs root")
        ensure_installed()
        munged_pid = _start_munge()
        root.mkdir(parents=True, exist_ok=True)
        for d in ("state", "spool", "log", "run"):
            (root / d).mkdir(exist_ok=True)
        host = socket.gethostname().split(".")[0]
        conf = root / "slurm.conf"
        conf.write_text("\n".join([
            "ClusterName=halotrans-test",
            f"SlurmctldHost={host}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "DefMemPerCPU=1024",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "ReturnToService=2",
            "KillWait=10",
            "MinJobAge=600",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'run' / 'slurmd.pid'}",
            _node_line() + " State=UNKNOWN",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))
        cluster = cls(root=root, conf=conf, munged_pid=munged_pid)
        env = cluster.env()
        try:
            for daemon in ("slurmctld", "slurmd"):
                log = open(root / "log" / f"{daemon}.stdout", "w")
                cluster.procs.append(subprocess.Popen([daemon, "-D", "-f", str(conf)], env=env,
                                                      stdout=log, stderr=subprocess.STDOUT))
                if daemon == "slurmctld":
                    cluster._wait(lambda: _sh(["scontrol", "ping"], env=env).stdout.count("UP") > 0, timeout)
            cluster._wait(lambda: _sh(["sinfo", "-h", "-o", "%t"], env=env).stdout.strip() in ("idle", "mix"),
                          timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _wait(self, ready, timeout: float) -> None:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0].args[0]} exited ({dead[0].returncode}); logs:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"SLURM not ready after {timeout:.0f} s; logs:\n{self.logs()}")

    def logs(self, tail: int = 2000) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-tail:]}"
                         for p in sorted((self.root / "log").glob("*")) if p.is_file())

    def stop(self) -> None:
        """Cancel leftover jobs and kill the daemons (and munged) that :meth:`start` started."""
        if self.procs and self.procs[0].poll() is None:
            _sh(["scancel", "--user", "root"], env=self.env(), timeout=10)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()
        if self.munged_pid is not None:
            try:
                os.kill(self.munged_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.munged_pid = None
