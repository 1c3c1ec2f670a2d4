"""Writing a projector logdir: the one ordered stage and what it relies on.

``stage`` is the Beam stage (everything meets there, sorted by the sample
key); ``assets`` builds the data folder's files from the kept rows;
``publish`` swaps them in as one transaction under the ``lock``, owning only
what the manifest (``ownership``) lists; ``layout`` names the logdir's
files. Thumbnails wait in staging files (``transforms.staging``) until the
sprite is drawn, out of the stage's group.
"""
