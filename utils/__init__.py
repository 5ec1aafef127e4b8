"""What the notebooks import, in three rooms.

- Top level, the lesson helpers: `catalog` (the two models), `images`, `labels`, `predictions`,
  `serving` and `deploy` (copies of notebook 02-04 cells, kept identical by tests/test_notebook_code.py),
  `payloads` (a PredictRequest, a REST body of base64 images), `warmup` (the warmup-record writer),
  `loadgen` (clients and load for the benchmarks), `errors`, `paths`.
- `utils.runtime`, the programs a notebook starts, waits for and stops: the local model server (or TF
  Serving in Docker) and Prometheus, each a `ManagedServer` recorded in build/run/ and stopped with its
  starter, and `wait_until`, the one polling loop.
- `utils.appendix`, what only the appendix (notebook 07) uses: the Kubernetes manifests (`k8s`), haproxy
  in front of local replicas (`haproxy`) and the rehearsal of the Deployment (`rehearsal`).

`model_server` is reached only through `model_server.contract` (and started as a process).
"""
