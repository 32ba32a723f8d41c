"""Helpers for writing the wrong answers in tests/mutants_<chapter>.py."""


def edit(source, old, new):
    """`source` with `old` replaced by `new`; `old` must occur in it and `new` must differ (a mutant
    that silently equals the reference would prove nothing)."""
    assert old in source and new != old, old
    return source.replace(old, new)
