"""The course's reference solutions, one module per chapter, generated from the chapter notebooks.

Later chapters import what earlier ones built, e.g. `from solutions.ch01_tensors import split_heads`.
Never edit a module here by hand: edit the chapter notebook and run `python tools/export_solutions.py`.
"""
