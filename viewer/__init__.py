"""Web viewer of a model folder (python view.py -m OUT): viser splats, camera snapping, on-demand renders."""
