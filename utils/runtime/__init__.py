"""The programs a notebook starts, waits for and stops, none of which may go stale.

- `processes`: every child recorded in build/run/ and ended with its starter, its ports claimed first;
- `waiting`: `wait_until`, the one polling loop: a wait looks at an answer, it never sleeps a guessed time;
- `managed_server`: `ManagedServer`, a child that is ready once it answers, stopped with one sentence;
- `model_server_process`: the model server's three backends (TF Serving's image in Docker, TF Serving's
  binary, the lab's `model_server`), `auto`'s choice among them, and the wait for a model's versions;
- `prometheus`: a real Prometheus scraping the model server, and its range queries.
"""
