"""Slicer-side helpers shared by the FemurUNet and FemurUNetTrain modules and the Segment Editor effect.

It may import slicer, qt and vtk; it imports no torch at import time (Slicer loads the module files at startup,
before PyTorch may be installed): ``install`` (PyTorch and pip requirements), ``options`` (the FemurUNet module's
settings as the engine's options), ``gui`` (parameter node and path field wiring).
"""
