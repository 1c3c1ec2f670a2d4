"""beam-projector: image embeddings -> TensorBoard Embedding Projector logdir.

Installs one package, ``beam_projector`` (the pipeline/ CLI layer and the
transforms/ library inside it), with the YAML presets of the repository's
``configs/`` as its package data (``beam_projector.configs``). Also the
package Dataflow/Flink workers install: pass ``--setup_file ./setup.py``
(the pattern of Beam's ``examples/complete/juliaset``).

Version ranges here are for library users; ``requirements.lock`` pins the
exact versions the tests ran with (``make install``, the Dockerfile and the
worker presets use it).
"""
import setuptools

REQUIRED = [
    # tfx-bsl 1.21 pins tensorflow 2.21 and apache-beam[gcp] 2.x; keep the
    # four in step.
    "apache-beam[gcp]>=2.77,<3",
    "tensorflow>=2.21,<2.22",
    "tfx-bsl>=1.21,<1.22",
    "tensorboard>=2.21,<2.22",
    "numpy>=1.26",
    "pillow>=10.3",
    "pyyaml>=6",
    # the offline layout (--layout umap): UMAP fitted on a sample, and
    # scikit-learn's HDBSCAN for the cluster column (sklearn >= 1.3)
    "umap-learn>=0.5.12,<0.6",
    "scikit-learn>=1.3",
]

setuptools.setup(
    name="beam-projector",
    version="0.1.0",
    description="Batch pipeline from images + a TensorFlow model to a TensorBoard projector logdir",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=setuptools.find_packages(include=["beam_projector", "beam_projector.*"])
    + ["beam_projector.configs"],
    # the presets stay at the top of the repository, where users look for them
    package_dir={"beam_projector.configs": "configs"},
    package_data={"beam_projector.configs": ["*.yaml"]},
    install_requires=REQUIRED,
    extras_require={
        "demo": ["scikit-learn>=1.3"],
        # websockets: the DevTools-protocol client of tests/test_browser.py
        # tensorflow-datasets: tests/test_tfds.py writes real TFDS shards offline
        "test": ["pytest>=8", "scikit-learn>=1.3", "websockets>=12", "tensorflow-datasets>=4.9.10"],
    },
    entry_points={"console_scripts": ["beam-projector=beam_projector.pipeline.cli:command"]},
)
