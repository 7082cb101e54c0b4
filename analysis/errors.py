"""The one exception type for bad input, shared by both halves (study/ and analysis/, which may
not import study/): each command line turns it into one message and exit code 2."""


class InputError(Exception):
    """Bad input from the user (config, sweep file, data source, storage), found before any work.

    `where` names the key path or file, `value` the offending value, `allowed` what would be
    accepted, so that the message says what is wrong and what to do.
    """

    def __init__(self, where: str, problem: str, allowed: str | None = None, value=...):
        problem = " ".join(str(problem).split())  # one line, whatever a library's message held
        self.where, self.problem, self.allowed, self.value = where, problem, allowed, value
        msg = f"{where}: {problem}"
        if value is not ...:
            msg += f" (got {value!r})"
        if allowed:
            msg += f"; allowed: {allowed}"
        super().__init__(msg)

    def __reduce__(self):  # picklable and copyable, so it crosses process boundaries (Ray) intact
        return (type(self), (self.where, self.problem, self.allowed, self.value))


def exit_code(call) -> int:
    """Run a command's work: 0, or the InputError's one line on stderr and 2."""
    import sys
    try:
        call()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
