"""Datasets, cameras and Gaussians. `Scene` ties a dataset to a model folder."""
from scene.gaussian_model import GaussianModel
from scene.scene import Scene

__all__ = ["GaussianModel", "Scene"]
