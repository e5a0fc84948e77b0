"""The ResNet experiment: David Page's "How to Train Your ResNet" ladder (post 1 -> post 8) and
airbench94, as one chain of stage files run by one training loop.

``python -m repro.resnet`` (``cli``) resolves the command line into ``plan.RunOptions`` and runs
a ``plan.Plan`` of stages x seeds. ``config`` reads the stage and preset files; ``nets``,
``loaders``, ``averaging`` and ``evaluation`` are the parts a stage switches; ``train`` is the one
training loop; ``records`` defines what a run writes; ``ladder`` turns records into the table;
``distributed`` holds the torchrun plumbing.
"""
