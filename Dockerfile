# Worker image for Dataflow (--sdk_container_image IMAGE) and Flink
# (--environment_type DOCKER --environment_config IMAGE): Beam's Python SDK
# image of the installed Beam and Python versions, with this package and its
# TensorFlow pins preinstalled, so workers start in seconds instead of
# installing TensorFlow from setup.py on every boot.
#
# Build from the repository root (README, "Worker image"; not built on the
# machines this project is developed on, which have no Docker):
#   docker build -t REGISTRY/beam-projector-worker:0.1.0 .
# The base tag must follow apache_beam.__version__ and the Python minor
# version of the launching environment: tests/test_container.py checks both,
# that every COPY source exists and that the package installs from exactly
# what is copied.
FROM apache/beam_python3.11_sdk:2.77.0

COPY setup.py README.md MANIFEST.in /opt/beam-projector/
COPY pipeline/ /opt/beam-projector/pipeline/
COPY transforms/ /opt/beam-projector/transforms/
COPY configs/ /opt/beam-projector/configs/

# A regular install (not editable), with setup.py's TensorFlow / tfx-bsl /
# tensorboard pins. apache-beam is held at the image's own version so pip
# never swaps out the SDK that the image's boot program belongs to. The
# import check runs from / so it imports the installed copy.
RUN pip install --no-cache-dir /opt/beam-projector "apache-beam[gcp]==2.77.0" \
 && cd / && python -c "import pipeline.run, transforms.write, tensorflow, tfx_bsl, configs"

# ENTRYPOINT stays the SDK image's /opt/apache/beam/boot: Dataflow and Flink
# start the worker through it.
