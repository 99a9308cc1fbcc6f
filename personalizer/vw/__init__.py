"""The one boundary around Vowpal Wabbit: nothing outside this package imports ``vowpalwabbit``.

- ``encoding``: Personalizer JSON -> VW text lines (features, seed tags, the catalog cache);
- ``arguments``: policy arguments parsed against a typed allow-list (also a model header's options);
- ``workspace``: build, predict, learn, save, load (model headers checked before VW reads them);
- ``trial``: a new policy or model exercised in a child process before the live engine uses it.

Submodules are imported explicitly (``from personalizer.vw import workspace``), so code
that only encodes (the evaluation's logged data, the trial's parent side) never loads VW.
"""
