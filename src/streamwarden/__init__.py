"""streamwarden: keeps many live video streams running without an operator."""

__version__ = "0.1.0"
