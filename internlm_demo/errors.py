"""Errors that reach the user as one readable line."""

from .i18n import LANGUAGES, Phrase


class LocalizedError(Exception):
    """An error the page shows in its own language: ``key`` names its text in the i18n table ``section``
    (``error_<key>``), ``fields`` fill it in; ``str()`` is the English text."""

    section = ""  # set by each subclass

    def __init__(self, key: str, fields: dict | None = None):
        super().__init__(key, fields or {})

    @property
    def phrase(self) -> Phrase:
        key, fields = self.args
        return Phrase(self.section, f"error_{key}", fields)

    def text(self, language: str = LANGUAGES[0]) -> str:
        return self.phrase.text(language)

    def __str__(self) -> str:
        return self.text()


def error_text(error: Exception, language: str) -> str:
    """What a page shows for ``error``: a LocalizedError in ``language``, any other error as its message."""
    return error.text(language) if isinstance(error, LocalizedError) else str(error)


class ModelFolderError(LocalizedError):
    """A model folder cannot be loaded; the message names the file and the fix (texts: the ``loading`` table)."""

    section = "loading"


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
