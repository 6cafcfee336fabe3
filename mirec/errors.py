"""User-facing errors: the CLI prints them as one line (no traceback) and exits with code 2."""


class MirecError(Exception):
    """An error caused by the user's input or configuration, with a message that says what to fix."""


class DataError(MirecError):
    """Unusable input data (wrong file, missing columns, no usable rows)."""


class ConfigError(MirecError):
    """A configuration file or value that cannot be used."""


class UnknownNameError(ConfigError, KeyError):
    """An unknown registry name (model, baseline, ...): a ConfigError for the CLI (one line, exit 2) and a
    KeyError for code that looks names up. str() is the plain message (KeyError's str would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
