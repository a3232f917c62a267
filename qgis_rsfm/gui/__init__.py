"""Dock, dialogs and widgets of the RSFM plugin."""
