"""Errors a user can cause.  The CLI prints them as one sentence and exits 2."""


class UserError(Exception):
    """A mistake the user can fix (bad file, missing device, no privilege).

    The message is one sentence that names the thing and the fix.
    """


class ConfigError(UserError):
    """A policy file mistake: names the file, the key path and the fix."""

    def __init__(self, path, key, problem, fix):
        self.path = str(path)
        self.key = key
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {problem}; {fix}")
