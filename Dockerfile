# Worker image for Dataflow (--sdk_container_image IMAGE) and Flink
# (--environment_type DOCKER --environment_config IMAGE): Beam's Python SDK
# image of the installed Beam and Python versions, with this package and its
# TensorFlow pins preinstalled, so workers start in seconds instead of
# installing TensorFlow from setup.py on every boot.
#
# Build from the repository root (docs/deploying.md, "Worker image"; not built on the
# machines this project is developed on, which have no Docker):
#   docker build -t REGISTRY/beam-projector-worker:0.1.0 .
# The base tag follows requirements.lock: its apache-beam version and the
# Python it was locked for, the versions the launcher runs (Beam's advice:
# launcher and workers on identical versions). tests/test_container.py
# checks that, that every COPY source exists and that the package installs
# from exactly what is copied.
FROM apache/beam_python3.11_sdk:2.78.0

COPY requirements.lock setup.py README.md MANIFEST.in /opt/beam-projector/
COPY beam_projector/ /opt/beam-projector/beam_projector/
COPY configs/ /opt/beam-projector/configs/

# The lock, hash-checked (its apache-beam is the image's own, so the SDK the
# boot program belongs to stays), then the package on top of it without
# resolving anything again; pip check proves setup.py's ranges hold. The
# import check runs from / so it imports the installed copy.
RUN pip install --no-cache-dir --require-hashes -r /opt/beam-projector/requirements.lock \
 && pip install --no-cache-dir --no-deps --no-build-isolation /opt/beam-projector \
 && pip check \
 && cd / && python -c "import beam_projector.pipeline.run, beam_projector.configs, tensorflow, tfx_bsl"

# ENTRYPOINT stays the SDK image's /opt/apache/beam/boot: Dataflow and Flink
# start the worker through it.
