"""SG-VLA: spatially-grounded vision-language-action models for mobile manipulation."""

__version__ = "0.1.0"
