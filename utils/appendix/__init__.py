"""What only the appendix (notebook 07, scaling out) uses.

- `k8s`: the Kubernetes manifests of deploy/: render, validate, cross-check, read;
- `haproxy`: haproxy in front of local replicas, as a Service with an L7 proxy;
- `rehearsal`: the Deployment rehearsed on loopback: replicas (TF Serving's binary or the stand-in), their
  ConfigMap, load, CPU;
- `figures`: the rehearsal's charts: who answered with which version, each move shaded.
"""
