"""Metrics of this installation: every module of this folder (``<name>.py``, not starting with ``_``) is imported
by every cell, and the metrics it registers (``slm_sweep.scoring.register_metric``) are scored beside the built-in
ones, with no setting to name it. Its source is part of the evaluation key of every cell, so adding, editing or
removing one re-scores the cells and nothing else. A module elsewhere on the Python path is named in
``eval.metric_modules`` instead."""
