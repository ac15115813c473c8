"""Learning rates chosen on the validation split, one per dataset x model x method, and the cells that use them.

A search is a sweep scored on the validation split carved from train (``hparams_search=lr_grid`` or ``optuna``,
``eval.split=val``); the test split is never generated on. ``python -m slm_sweep.tune DIR [DIR ...]`` reads the
search's result.json files and writes the table (default ``slm_sweep/tuned/lr.yaml``)::

    lr: {<dataset>: {<model>: {<method>: <learning rate>}}}
    searched: {<dataset>: {<model>: {<method>: {metric, chosen, best, margin, ..., val_examples, searches, seeds,
                                                candidates: [{lr, <metric>, ..., runs}], trained_with}}}}

A cell with ``tuning.lr=tuned`` (``experiment=paper``) takes its learning rate from that table before its identity
is computed, so the tuned value is in its training key. Without an entry, ``tuning.on_missing`` decides: ``method``
(the default) keeps ``method.lr`` and says so; ``refuse`` (``experiment=paper``) stops the cell before anything
loads, naming the entry and the search that writes it (``make paper-search`` for the paper's cells; a sweep's
preflight refuses the grid, one line per missing entry). result.json records the value and where it came from
under ``learning_rate``.

Selection: the highest mean validation accuracy over the seeds of a candidate, on the dataset's claims metric (the
one the report's claims read: flexible, lenient on OrcaMath; ``--metric`` for another validation accuracy); a tie
goes to the lower mean validation loss, then to the smaller learning rate, and is flagged (``tied``). Only rates
that completed every seed any rate ran are candidates; a rate of the grid the cells record that no cell ran is
listed as ``not run``. A winner at an end of the candidates compared is marked ``at_edge`` (``smallest``,
``largest``, or ``only`` when no other rate completed). The winner's margin over the runner-up is recorded with
its standard error, and a margin the search did not separate from noise is flagged ``within_noise`` (lead.py).

Each module does one job; each imports those above it in this list only:

- ``table.py``: the table file: its path, read and checked, an entry's rate and search record, written, rendered.
- ``trained_with.py``: what a search trained and scored with (``tuned_under``), and the guards that refuse a tuned
  rate searched otherwise than a cell trains and is scored (``check_tuned_under``, ``check_tuned_data``).
- ``cell_rate.py``: a cell's learning rate before its identity (``resolve_lr``, ``validate``, ``lr_grid``,
  ``check_missing``, ``check_search_scoring``, ``MissingTunedRate``).
- ``records.py``: a search's records, read from its folders and grouped by dataset x model x method.
- ``lead.py``: the chosen rate's lead over the runner-up and the test of it.
- ``choose.py``: the rate of each dataset x model x method from a search's records (``choose``).
- ``cli.py`` (``__main__.py``): ``python -m slm_sweep.tune`` and its ``--paper-search``.
"""
