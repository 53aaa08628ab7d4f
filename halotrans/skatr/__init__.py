"""SKATR: JEPA pretraining of the shared ViT on 21cm light cones, frozen summaries, regression and NPE.

* :mod:`~halotrans.skatr.config`: the ``lightcone``, ``jepa`` and ``skatr`` config sections;
* :mod:`~halotrans.skatr.priors`, :mod:`~halotrans.skatr.simulate`, :mod:`~halotrans.skatr.store`,
  :mod:`~halotrans.skatr.generate`: 21cmFAST light cones (parameter draws, one run, the resumable HDF5 set);
* :mod:`~halotrans.skatr.dataset`, :mod:`~halotrans.skatr.data`: the light-cone data set (thermal noise,
  line-of-sight fit) and the reproducible batches of the tasks;
* :mod:`~halotrans.skatr.sampling`: what a cheaper redshift sampling changes (matched seeds);
* :mod:`~halotrans.skatr.masks`, :mod:`~halotrans.skatr.jepa`: tube masks (I-JEPA's and SKATR's long/short
  scheme) and the JEPA model (EMA target);
* :mod:`~halotrans.skatr.tasks`: the ``jepa``, ``regress`` and ``npe`` training tasks;
  :mod:`~halotrans.skatr.compress`: what an NPE flow is conditioned on;
* :mod:`~halotrans.skatr.summaries`, :mod:`~halotrans.skatr.eval`, :mod:`~halotrans.skatr.report`: cached
  frozen summaries (8 transverse symmetries), test-set evaluation (R², flow ensembles), reports;
  :mod:`~halotrans.skatr.calibration` (HPD in θ and logit space, ranks, TARP, the calibrated noise band),
  :mod:`~halotrans.skatr.diagnostics` (paired bootstrap, effective rank, linear probes);
* :mod:`~halotrans.skatr.cli`: the ``lightcones`` and ``skatr`` commands.

Built on the core (``halotrans.models``, ``halotrans.train``, ``halotrans.parallel``); the core never
imports it: its tasks are registered by name in :mod:`halotrans.train.registry`.
"""
