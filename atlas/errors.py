"""One exception type for problems the user can fix (bad paths, bad flags, bad files).

The CLI turns :class:`AtlasInputError` into a one-line message and exit code 2; anything
else is a bug and exits 1.
"""


class AtlasInputError(ValueError):
    """Bad input or usage: the message says what is wrong and how to fix it."""


def first_line(exc: BaseException | str) -> str:
    """The first non-empty line of a message: a library's error (ffmpeg, a compiler,
    inductor) may carry pages of its own output, and every message of ours is one line."""
    line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return line or exc.__class__.__name__
