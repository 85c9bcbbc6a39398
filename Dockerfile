# The serving image: Triton Inference Server with the assembled model repository.
# Built by make_triton_image.sh from build/<model_name>/context/ (this file is copied there), which always passes
#   the base:         --build-arg BASE_IMAGE=<image>  (nvcr.io/nvidia/tritonserver:<release>-py3 for --triton-release,
#                     the default release included (make_triton_image.sh's DEFAULT_RELEASE), or --base-image / --standin)
#   offline install:  --build-arg WHEELHOUSE=1 with the wheels in the context's wheels/
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

ARG WHEELHOUSE=0
# Debian/Ubuntu 24.04 bases mark the system Python as externally managed; this image is the environment.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

COPY requirements-serving.txt /opt/tritoned/requirements-serving.txt
COPY wheels/ /opt/tritoned/wheels/
RUN if [ "$WHEELHOUSE" = "1" ]; then \
      python3 -m pip install --no-cache-dir --no-index --find-links /opt/tritoned/wheels \
        -r /opt/tritoned/requirements-serving.txt; \
    else \
      python3 -m pip install --no-cache-dir -r /opt/tritoned/requirements-serving.txt; \
    fi \
 && rm -rf /opt/tritoned/wheels

# Owned by root and not writable by the server's user: the model repository is read-only to Triton. The one home
# of its path: the gateway serves the repository TRITONED_REPOSITORY names (python -m gateway --help), and so does
# the health check.
ENV TRITONED_REPOSITORY=/models
COPY model_repository/ ${TRITONED_REPOSITORY}/
# The entrypoint (docker/serve_image.sh), the liveness check and the gateway they run (the same as serve_local.sh's).
COPY serve_image.sh healthcheck /opt/tritoned/
COPY gateway/ /opt/tritoned/gateway/

# uid 1000 is the user triton-server of the NGC image (and of the stand-in base).
USER 1000
EXPOSE 8000 8001 8002

# End to end: a probe text through the public port 8000 must come back with a label (within 4 s).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 CMD ["/opt/tritoned/healthcheck"]

# The gateway (PID 1 after exec) serves 8000/8001/8002 and runs tritonserver on the repository behind it; SIGTERM
# drains.
# Arguments of docker run go to tritonserver; -e TRITONED_ADMIN_KEY=... opens the restricted APIs to requests
# with that key; -e TRITONED_...=... sets the gateway's limits (see /opt/tritoned/serve_image.sh --help).
ENTRYPOINT ["/opt/tritoned/serve_image.sh"]
CMD []
