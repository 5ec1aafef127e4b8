"""`ManagedServer`: a program the lab runs as a child, ready once it answers; a context manager.

The local model server, Prometheus and haproxy are ManagedServers. Each says how it starts (its command
line, `prepare`) and where it says it is ready (`ready_url`); the start, the readiness wait that fails
fast when the child exits, and the stop said in one sentence are written once, here.
"""

from dataclasses import dataclass

import requests

from utils.errors import LabError
from utils.runtime.processes import STOP_TIMEOUT_SECONDS, ManagedProcess
from utils.runtime.waiting import wait_until


@dataclass(frozen=True)
class Stopped:
    """What stopping a server did, shown as one sentence in a notebook."""

    description: str
    exit_code: int = None

    def __repr__(self):
        return self.description


class ManagedServer:
    """A ManagedProcess (recorded in build/run/, ended if its starter dies) with a readiness check.

    Subclasses set `kind` (its name in build/run/ and in sentences), `article` ("the " before a common
    noun) and `ready_url`, and override `available`, `prepare`, `answering` and `stop_softly` as needed.
    """

    kind = "server"
    article = ""
    install_hint = ""  # what to do when the program is not `available`
    ready_url = None  # answers HTTP 200 once the child is ready; None: ready once started

    def __init__(self, argv, ports, log_path, env=None):
        self.managed = ManagedProcess(argv, self.kind, ports, log_path, env=env)

    @property
    def process(self):
        """The child's subprocess.Popen (None before start)."""
        return self.managed.process

    @property
    def available(self):
        """Whether the program can run (else `start` raises `install_hint`)."""
        return True

    def prepare(self):
        """Before the child starts: write its config files."""

    def answering(self):
        """Whether the child is ready: `ready_url` answers HTTP 200."""
        if self.ready_url is None:
            return True
        try:
            return requests.get(self.ready_url, timeout=1).status_code == 200
        except requests.ConnectionError:  # not listening yet
            return False

    def stop_softly(self, timeout):
        """Before the child is stopped: let it finish what it is doing."""

    def start(self, timeout=30):
        """Start the child and wait until it is ready; a LabError if it exits first or is not ready in time."""
        if not self.available:
            raise LabError(self.install_hint)
        self.prepare()
        self.managed.start()
        wait_until(self._answering_unless_exited, timeout, f"{self.article}{self.kind} answering")
        return self

    def _answering_unless_exited(self):
        if self.answering():
            return True
        code = self.managed.exited()
        if code is not None:
            raise LabError(f"{self.article.capitalize()}{self.kind} exited with code {code}: see "
                           f"{self.managed.log_path}.")
        return False

    def log(self):
        return self.managed.log_path.read_text()

    def stop(self, timeout=STOP_TIMEOUT_SECONDS):
        """Stop the child if it runs (SIGTERM, as `docker stop` does); says what it stopped."""
        if self.process is None:
            return Stopped(f"{self.article.capitalize()}{self.kind} was not started.")
        already = self.process.poll()
        if already is None:
            self.stop_softly(timeout)
        code = self.managed.stop(timeout)
        what = f"{self.article}{self.managed.record.describe()}"
        if already is not None:
            return Stopped(f"{what[:1].upper()}{what[1:]} had already exited with code {already}.", already)
        return Stopped(f"Stopped {what}; exit code {code}.", code)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()
