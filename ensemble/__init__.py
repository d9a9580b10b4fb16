"""ens: deep ensembles of CNNs for medical image classification and segmentation.

Data flows one way: dataset catalog (``ensemble.data``) -> member trainer
(``ensemble.train``) -> store (``ensemble.store``) -> fusion (``ensemble.fusion``)
-> report (``ensemble.report``). A module imports only from those before it.
"""

__version__ = "0.2.0"
