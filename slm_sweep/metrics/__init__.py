"""Metrics of this installation: every module of this folder (``<name>.py``, not starting with ``_``) is imported
by every cell, and the metrics it registers (``slm_sweep.scoring.register_metric``) are scored beside the built-in
ones, with no setting to name it. The folder's code, every Python file of it (the ``_*.py`` helpers a metric
imports too), is part of the evaluation key of every cell once the folder holds a metric, so adding, editing or
removing one re-scores the cells and nothing else. It is hashed as a module is imported, once per process: the
cells of a one-process sweep score with what its first cell imported, and their keys say so. A module elsewhere on
the Python path is named in ``eval.metric_modules`` instead."""
