"""The one exception type the CLI turns into a single line and a non-zero exit."""


class DfeditError(Exception):
    """A problem the user can fix (bad input, missing model, unwritable output).

    The message is one sentence saying what is wrong and what to do; the CLI prints it
    without a traceback. Anything else that escapes is a bug and keeps its traceback.
    """


class ParamError(DfeditError):
    """A bad value of one named parameter. The library's message names the parameter as the API
    spells it (`num_samples must be at least 1`); a command line names the option it came from
    (`--num-samples must be at least 1`, see `cli_message`), so the core never speaks of flags.

    Other parameters the sentence mentions are written `{name}` in `problem` and listed in `also`
    (the parameter's own name may be a placeholder too, without listing it):
    `ParamError("eta", "applies to {sampler} ddim only", also=("sampler",))` reads "eta applies to
    sampler ddim only" from the library and "--eta applies to --sampler ddim only" on a command line.
    """

    def __init__(self, param: str, problem: str, also: tuple[str, ...] = ()):
        self.param, self.problem, self.also = param, problem, tuple(also)
        super().__init__(f"{param} {self._fill(lambda n: n)}")

    def _fill(self, spell) -> str:
        text = self.problem
        for name in (self.param, *self.also):
            text = text.replace("{" + name + "}", spell(name))
        return text

    def cli_message(self) -> str:
        flag = lambda n: "--" + n.replace("_", "-")  # noqa: E731
        return f"{flag(self.param)} {self._fill(flag)}"
