"""OOD robustness and shape bias of CLIP models with the model-vs-human protocol (Geirhos et al. 2021).

Modules (torch is only imported by ``classifier``, ``evaluate`` and ``modelvshuman``):

* ``protocol``      datasets, conditions, exclusions, file naming of model-vs-human
* ``categories``    the 16-class ImageNet mapping (mean probability over 207 ImageNet indices)
* ``manipulations`` the 12 parametric image manipulations (seeded numpy functions)
* ``datasets``      stimulus folders in model-vs-human's layouts; ``make_datasets``
* ``rawdata``       trial CSVs in model-vs-human's raw-data format
* ``metrics``       accuracy, OOD accuracy, accuracy difference, observed / error consistency, shape bias
* ``classifier``    an open_clip model as a 16-class decision maker
* ``evaluate``      evaluation loop with resume; summary JSON and figures (``plots``)
* ``modelvshuman``  registers our models in the ``modelvshuman`` package when it is installed
* ``cli``           ``mamba-clip ood make-datasets | evaluate | metrics``
"""
