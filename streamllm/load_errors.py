"""The errors of loading a model that the user can fix (the message names the fix); the CLI prints
them as one line with exit code 2. Apart from models.py so that the loaders it calls can raise them."""


class ModelUnavailableError(RuntimeError):
    """The model cannot be loaded here; the message names the fix."""


class ModelOptionError(ValueError):
    """An unknown or unusable --dtype or --device; the message names the fix."""
