"""The layout's fit, run in a child process of the worker that holds the sample.

Why a process: UMAP brings numba, LLVM and pynndescent (about 180 MiB
resident once imported) and its fit's temporaries (float64 copies of the
sample for the PCA), which would stay in the worker process beside
TensorFlow for the rest of the job: at N = 6,000 MobileNetV2 the CLI's peak
RSS went from 1,529 to 1,859 MiB with the fit in-process. A child returns
all of it to the OS when it exits, and the worker holds only the sample it
sends and the model (a few MB) it gets back. Same code, same wheels, so
the same bytes as an in-process fit.

    python -m beam_projector.transforms.layout_child IN OUT
"""
import os
import pickle
import subprocess
import sys
import tempfile

import numpy as np


def fit_sample(sample, dims, seed, method):
    """The layout model of ``sample`` ((order key, vector, label) rows, any
    order), or None for an empty sample."""
    from beam_projector.transforms import layout

    sample = sorted(sample, key=lambda r: r[0])
    if not sample:
        return None
    labels = [r[2] for r in sample] if sample[0][2] is not None else None
    return layout.fit_layout([r[0] for r in sample], np.stack([r[1] for r in sample]),
                             labels, dims=dims, seed=seed, method=method)


def fit_in_child(sample, dims, seed, method, timeout: float = 3600):
    """``fit_sample`` in a child Python (this interpreter, this sys.path).
    Raises RuntimeError with the child's last line if it fails."""
    with tempfile.TemporaryDirectory(prefix="beam-projector-layout-") as folder:
        src, dst = os.path.join(folder, "sample.pkl"), os.path.join(folder, "model.pkl")
        with open(src, "wb") as f:
            pickle.dump((list(sample), dims, seed, method), f, protocol=pickle.HIGHEST_PROTOCOL)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = subprocess.run([sys.executable, "-m", __name__, src, dst], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=timeout, check=False)
        if proc.returncode != 0:
            lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise RuntimeError(f"the layout's fit failed in its child process "
                               f"(exit {proc.returncode}): "
                               f"{lines[-1] if lines else 'no message'}")
        with open(dst, "rb") as f:
            return pickle.load(f)


def main(argv=None):
    src, dst = (argv or sys.argv[1:])[:2]
    with open(src, "rb") as f:
        sample, dims, seed, method = pickle.load(f)
    model = fit_sample(sample, dims, seed, method)
    with open(dst + ".tmp", "wb") as f:
        pickle.dump(model, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(dst + ".tmp", dst)


if __name__ == "__main__":
    main()
