"""Sources: an input -> ``ImageRef`` records and dead letters.

Three input kinds, a module each: ``csv_files`` (a CSV of image paths),
``tfrecords`` (tf.Example records holding image bytes or paths, with their
framing in ``tfrecord_framing`` and TensorFlow Datasets folders' metadata in
``tfds``) and ``folder`` (a folder or glob of image files). ``spec`` holds
what the launcher learns about an input; ``detect`` learns it (kind,
columns), before any worker runs; ``read`` is the public ``ReadImages``.
"""
