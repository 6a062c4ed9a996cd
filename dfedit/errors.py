"""The one exception type the CLI turns into a single line and a non-zero exit."""


class DfeditError(Exception):
    """A problem the user can fix (bad input, missing model, unwritable output).

    The message is one sentence saying what is wrong and what to do; the CLI prints it
    without a traceback. Anything else that escapes is a bug and keeps its traceback.
    """
