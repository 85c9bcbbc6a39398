"""The front of every tritonserver this project ships (serve_local.sh and the image).

`python -m gateway [options] -- TRITONSERVER [ARGS...]` starts tritonserver as its child on internal ports bound
to 127.0.0.1 and serves the public HTTP, gRPC and metrics ports itself: every request is checked (size, JSON
depth, duplicate keys, top-k on string outputs, content type, compressed bodies) before Triton sees it, a
supervisor watches the backend processes and the pipeline end to end and reloads a broken model, readiness
tells the truth, and SIGTERM drains. See README.md ("Безопасность", "Надёжность") and `python -m gateway --help`.

Kept free of imports: `python -m gateway.healthcheck` must start fast.
"""
