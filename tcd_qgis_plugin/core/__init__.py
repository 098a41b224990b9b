"""Main-thread-free parts of the plugin: the task, layer loading, areas of interest, remembered runs."""
