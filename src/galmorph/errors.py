"""The exceptions a user can act on: the CLI prints each as one line and exits with its code."""


class UserError(Exception):
    """Bad input (a file, row, column or parameter); the message names it and says what was expected."""

    exit_code = 1


class PromotionRefused(UserError):
    """The promotion gate said no: not a mistake, a decision scripts must be able to tell apart."""

    exit_code = 3
