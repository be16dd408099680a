"""Errors that reach the user as one readable line."""


class ModelFolderError(Exception):
    """A model folder cannot be loaded; the message names the file and the fix."""


class ContextOverflowError(ValueError):
    """A single message does not fit into the model's context window."""


class PortInUseError(OSError):
    """An app's address is taken (or not on this machine); the message names the flag and variable that change it."""
