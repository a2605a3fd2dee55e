"""Errors that mean the user asked for something that cannot work."""


class EngineInputError(ValueError):
    """Bad models, tokenizers, devices or generation options; the message is one line."""
