"""Models beside Uno: the plug-in loader (``plugin.py``) and the shipped models (docs/models.md)."""
