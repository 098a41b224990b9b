"""Processing provider "Tree crown delineation" (``tcd``): the toolbox, batch, Model Builder and qgis_process."""
