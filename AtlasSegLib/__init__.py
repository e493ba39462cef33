"""AtlasSegLib: run the AbdomenAtlas CT segmentation models (SuPreM, DiffTumor, your own) on CT scans.

Host-independent: this package never imports slicer, qt, ctk or vtk, so it runs as a plain library and CLI.
"""
__version__ = "0.1.0"
