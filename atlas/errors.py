"""One exception type for problems the user can fix (bad paths, bad flags, bad files).

The CLI turns :class:`AtlasInputError` into a one-line message and exit code 2; anything
else is a bug and exits 1.
"""


class AtlasInputError(ValueError):
    """Bad input or usage: the message says what is wrong and how to fix it."""
