"""The one base class of mistakes in what a user gave: a config value, a data row, a reward or
model spec. The CLI prints these as `rlhf <command>: error: ...` and exits 2; any other exception
is a bug in this library or beneath it, and keeps its traceback."""


class UserError(Exception):
    """A problem in the user's input, with a message that says where and how to fix it."""
