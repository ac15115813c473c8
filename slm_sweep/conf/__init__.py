"""Hydra config folder (a package so that the installed `slm-sweep` script finds it as slm_sweep.conf)."""
