"""The one exception type the CLI turns into a single line and a non-zero exit."""


class DfeditError(Exception):
    """A problem the user can fix (bad input, missing model, unwritable output).

    The message is one sentence saying what is wrong and what to do; the CLI prints it
    without a traceback. Anything else that escapes is a bug and keeps its traceback.
    """


class ParamError(DfeditError):
    """A bad value of one named parameter. The library's message names the parameter as the API
    spells it (`num_samples must be at least 1`); a command line names the option it came from
    (`--num-samples must be at least 1`, see `cli_message`), so the core never speaks of flags."""

    def __init__(self, param: str, problem: str):
        self.param, self.problem = param, problem
        super().__init__(f"{param} {problem}")

    def cli_message(self) -> str:
        return f"--{self.param.replace('_', '-')} {self.problem}"
