"""Errors that reach the user as one readable line."""


class ModelFolderError(Exception):
    """A model folder cannot be loaded; the message names the file and the fix."""


class ContextOverflowError(ValueError):
    """A single message does not fit into the model's context window."""


class PortInUseError(OSError):
    """An app's address is taken (or not on this machine); the message names the flag and variable that change it."""


class SettingsError(Exception):
    """Flags or environment variables an app cannot start with; the message is argparse's usage and error
    (or the help text, with ``status`` 0)."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status
