"""The course's reference solutions, one module per chapter, generated from the chapter notebooks.

Later chapters import what earlier ones built, e.g. `from solutions.ch01_tensors import split_heads`.
The chapter modules are generated: never edit one by hand; edit the chapter notebook and run
`python tools/refresh.py <chapter>`. `solutions/testing.py` is the exception: the hand-written test
machinery (checks, oracles, switch-off, meters) that every chapter's tests import.
"""
