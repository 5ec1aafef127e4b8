"""Processes the lab starts (model servers, Prometheus, haproxy), owned so that none goes stale.

`ManagedProcess` is the child itself; `utils.runtime.managed_server.ManagedServer` adds its readiness.

- Every process is recorded in `build/run/<pid>.json` (its kind, ports, command line and the pid of the
  process that started it), so the next notebook and `make stop` can find it. `LAB_RUN_DIR` names another
  directory: a test of `make stop` uses its own, so it never stops servers another test is using.
- A watchdog ends it when the process that started it exits, even when that process is killed (a dead
  kernel), so no port stays held by an orphan.
- Before a start, `claim_ports` checks the ports: one held by an earlier lab process is freed by stopping
  that process (said in one line); one held by anything else is a `LabError` naming the holder and the fix.
"""

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from utils.errors import LabError
from utils.paths import BUILD_DIR, PROJECT_ROOT

RUN_DIR = Path(os.environ.get("LAB_RUN_DIR") or BUILD_DIR / "run")
STOP_TIMEOUT_SECONDS = 30
# Where `make setup` unpacks Debian packages when it cannot install them as root.
UNPACKED_PREFIX = PROJECT_ROOT / ".venv" / "opt"


@dataclass(frozen=True)
class Program:
    """A program the lab runs but does not ship: found by variable, on PATH, or where `make setup` put it."""

    name: str  # on PATH
    env_var: str  # names the binary explicitly
    unpacked: str  # its path inside its Debian package, once unpacked under UNPACKED_PREFIX

    def find(self):
        """The program's path, or None."""
        named = os.environ.get(self.env_var)
        if named:
            return named if Path(named).is_file() else None
        unpacked = UNPACKED_PREFIX / self.unpacked
        return shutil.which(self.name) or (str(unpacked) if unpacked.is_file() else None)


PROMETHEUS = Program("prometheus", "LAB_PROMETHEUS", "usr/bin/prometheus")
HAPROXY = Program("haproxy", "LAB_HAPROXY", "usr/sbin/haproxy")
CHROMIUM = Program("chromium", "LAB_CHROMIUM", "usr/lib/chromium/chromium")
CHROMEDRIVER = Program("chromedriver", "LAB_CHROMEDRIVER", "usr/lib/chromium/chromedriver")


@dataclass
class ProcessRecord:
    """What `build/run/<pid>.json` says of one process the lab started."""

    pid: int
    kind: str  # "model server", "Prometheus", ...
    argv: list
    ports: dict = field(default_factory=dict)  # parameter name -> port, e.g. {"rest_port": 8501}
    starter_pid: int = 0
    create_time: float = 0.0  # psutil's, to tell the process from a later one with the same pid

    @property
    def path(self):
        return RUN_DIR / f"{self.pid}.json"

    def save(self):
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_suffix(".tmp")
        staging.write_text(json.dumps(asdict(self)))
        os.replace(staging, self.path)

    def forget(self):
        self.path.unlink(missing_ok=True)

    def process(self):
        """The live psutil.Process this record names, or None once it has exited."""
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.create_time) > 0.01 or process.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            return None
        return process

    def describe(self):
        if not self.ports:
            return f"{self.kind} (pid {self.pid})"
        ports = " and ".join(str(port) for port in self.ports.values())
        return f"{self.kind} (pid {self.pid}, port{'s' if len(self.ports) > 1 else ''} {ports})"


def lab_processes():
    """Records of the lab's processes that are still running; records of exited ones are removed."""
    records = []
    for path in sorted(RUN_DIR.glob("*.json")) if RUN_DIR.is_dir() else []:
        try:
            record = ProcessRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)  # unreadable: not a record this lab can act on
            continue
        if record.process() is None:
            record.forget()
        else:
            records.append(record)
    return records


def wait_for_exit(pid, timeout):
    """True once process `pid` has exited (a zombie counts: it holds no port), False after `timeout` s.

    The process need not be our child: on Linux a pidfd says when it exits, elsewhere psutil polls.
    """
    if hasattr(os, "pidfd_open"):
        try:
            handle = os.pidfd_open(pid)
        except ProcessLookupError:
            return True
        try:
            return bool(select.select([handle], [], [], timeout)[0])
        finally:
            os.close(handle)
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.TimeoutExpired:
        return False
    except psutil.NoSuchProcess:
        return True
    return True


def stop_process(record, timeout=STOP_TIMEOUT_SECONDS):
    """Stop a recorded process that may belong to another starter: SIGTERM, then SIGKILL after `timeout`."""
    process = record.process()
    if process is not None:
        process.terminate()
        if not wait_for_exit(record.pid, timeout):
            process.kill()
            wait_for_exit(record.pid, timeout)
    record.forget()


def free_port():
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_holder(port):
    """(pid or None, command line) of the process listening on TCP `port`, or None when it is free."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:  # macOS without root: fall back to a bind test
        connections = []
    for connection in connections:
        if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port:
            return connection.pid, _command_line(connection.pid)
    if not _can_bind(port):
        return None, "an unknown process"
    return None


def _command_line(pid):
    if pid is None:
        return "a process of another user"
    try:
        return " ".join(psutil.Process(pid).cmdline())[:120] or psutil.Process(pid).name()
    except psutil.Error:
        return "a process that has exited"


def _can_bind(port):
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def claim_ports(ports):
    """Make sure every port in `ports` ({parameter name: port}) is free before a start.

    A port held by an earlier lab process is freed by stopping that process (said in one line); one held
    by anything else raises LabError naming the port, its holder and the fix.
    """
    records = {record.pid: record for record in lab_processes()}
    for name, port in ports.items():
        holder = port_holder(port)
        if holder is None:
            continue
        pid, command = holder
        record = records.get(pid)
        if record is not None:
            stop_process(record)
            print(f"Stopped an earlier lab {record.describe()}, which held port {port}.")
            continue
        who = f"{command} (pid {pid})" if pid is not None else command
        raise LabError(f"Port {port} is held by {who}: stop it, or change `{name}` in the parameters cell.")


class ManagedProcess:
    """A child process recorded in build/run/ and ended by a watchdog if its starter dies."""

    def __init__(self, argv, kind, ports=None, log_path=None, env=None):
        self.argv = [str(a) for a in argv]
        self.kind = kind
        self.ports = dict(ports or {})
        self.log_path = Path(log_path) if log_path else None
        self.env = env
        self.process = None
        self.record = None
        self.watchdog = None

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def start(self):
        claim_ports(self.ports)
        output = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            output = self.log_path.open("w")
        try:
            self.process = subprocess.Popen(self.argv, stdout=output, stderr=subprocess.STDOUT, env=self.env,
                                            stdin=subprocess.DEVNULL)
        finally:
            if output is not subprocess.DEVNULL:
                output.close()
        self.record = ProcessRecord(self.process.pid, self.kind, self.argv, self.ports, os.getpid(),
                                    psutil.Process(self.process.pid).create_time())
        self.record.save()
        self.watchdog = start_watchdog(os.getpid(), self.process.pid)
        return self

    def exited(self):
        """The exit code once the process has exited, else None."""
        return None if self.process is None else self.process.poll()

    def stop(self, timeout=STOP_TIMEOUT_SECONDS):
        """Stop the process; returns its exit code (None if it never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.watchdog is not None:
            self.watchdog.wait(STOP_TIMEOUT_SECONDS)  # it exits once the child has
        self.record.forget()
        return self.process.returncode


def start_watchdog(starter_pid, child_pid):
    """A small process that ends `child_pid` when `starter_pid` exits (Linux: pidfd; elsewhere none)."""
    if not hasattr(os, "pidfd_open"):
        return None
    code = f"from utils.runtime.processes import watch; watch({starter_pid}, {child_pid})"
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def watch(starter_pid, child_pid, grace_seconds=STOP_TIMEOUT_SECONDS):
    """Block until the starter or the child exits; if the starter went first, stop the child.

    pidfds name the two processes themselves, so a pid reused by a later process is never signalled.
    """
    try:
        child = os.pidfd_open(child_pid)
    except ProcessLookupError:
        return
    try:
        starter = os.pidfd_open(starter_pid)
    except ProcessLookupError:
        starter = None
    if starter is not None:
        ready, _, _ = select.select([starter, child], [], [])
        if child in ready:
            return
    try:
        signal.pidfd_send_signal(child, signal.SIGTERM)
        ready, _, _ = select.select([child], [], [], grace_seconds)
        if not ready:
            signal.pidfd_send_signal(child, signal.SIGKILL)
    except ProcessLookupError:
        return  # it exited on its own meanwhile
    finally:
        RUN_DIR.joinpath(f"{child_pid}.json").unlink(missing_ok=True)


@contextlib.contextmanager
def stderr_to(log_path):
    """Send file descriptor 2 (this process's and its children's stderr, C++ libraries' too) to `log_path`
    meanwhile, then restore it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with log_path.open("a") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
