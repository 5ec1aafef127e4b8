"""`python -m labtools stop` (`make stop`): stop every server the lab started (model servers and their
replicas, TF Serving's binary, Prometheus, haproxy, TF Serving containers), whichever notebook or kernel
started it."""

import argparse

from utils.errors import LabError
from utils.runtime.model_server_process import stop_lab_containers
from utils.runtime.processes import lab_processes, stop_process


def main(argv=None):
    argparse.ArgumentParser(prog="python -m labtools stop", description=__doc__).parse_args(argv)
    stopped = 0
    for record in lab_processes():
        stop_process(record)
        print(f"Stopped the {record.describe()}.")
        stopped += 1
    try:
        containers = stop_lab_containers()
    except (OSError, LabError) as error:
        print(f"Could not remove the lab's TF Serving containers: {error}")
        return 1
    for name in containers:
        print(f"Stopped the TF Serving container {name}.")
    stopped += len(containers)
    if not stopped:
        print("Nothing the lab started is running.")
    return 0
