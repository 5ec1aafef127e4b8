"""`python -m labtools stop` (`make stop`): stop every server the lab started (model servers and their
replicas, Prometheus, haproxy, the Docker service), whichever notebook or kernel started it."""

import argparse
import subprocess

from utils.processes import lab_processes, stop_process
from utils.server import DOCKER_RECORD, stop_docker_services


def main(argv=None):
    argparse.ArgumentParser(prog="python -m labtools stop", description=__doc__).parse_args(argv)
    stopped = 0
    for record in lab_processes():
        stop_process(record)
        print(f"Stopped the {record.describe()}.")
        stopped += 1
    if DOCKER_RECORD.exists():
        try:
            print(f"Stopped the Docker service {stop_docker_services()}.")
        except (OSError, subprocess.CalledProcessError) as error:
            print(f"Could not stop the Docker service ({error}): run `docker compose down`.")
            return 1
        stopped += 1
    if not stopped:
        print("Nothing the lab started is running.")
    return 0
