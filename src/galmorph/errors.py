"""The one exception type for a user's mistake: the CLI prints it as one line and exits non-zero."""


class UserError(Exception):
    """Bad input (a file, row, column or parameter); the message names it and says what was expected."""
