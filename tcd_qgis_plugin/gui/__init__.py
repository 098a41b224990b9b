"""Widgets: the dialog and the runs panel. They emit requests; the plugin object acts."""
