"""`wait_until`: the lab's one polling loop. A wait looks at an answer; it never sleeps a guessed time."""

import time

from utils.errors import LabError


def wait_until(predicate, timeout, what, interval=0.2):
    """Call `predicate()` until it returns something true, and return that.

    `predicate` may raise (a LabError when the process waited for has exited) to fail fast. After
    `timeout` seconds, a LabError: "<what> did not happen within <timeout> s."
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise LabError(f"{what[:1].upper()}{what[1:]} did not happen within {timeout:g} s.")
        time.sleep(interval)  # the next look
