"""Search spaces and config groups, named as in RapidFire AI's ``rapidfireai.automl``.

- knobs: ``List`` (categorical), ``Range`` (numeric) -- ``knobs.py``
- configs: ``RFModelConfig`` (``model_config.py``); ``RFLoraConfig``, ``RFSFTConfig``,
  ``RFDPOConfig``, ``RFGRPOConfig``: real subclasses of the peft / TRL classes whose fields
  may hold knobs (``configs.py``, ``rf_config.py``, ``translate.py``)
- searches: ``RFGridSearch``, ``RFRandomSearch`` -> ``expand()`` -> ``list[RunSpec]``
  (``search.py`` states the contract the engine relies on)
- automatic searches, deciding at chunk-round ends with stop / clone commands (``policy.py``):
  ``RFSuccessiveHalving`` (ASHA, ``asha.py``), ``RFPopulationBased`` (PBT, ``pbt.py``),
  ``RFOptuna`` (Optuna samplers and pruning, ``optuna_search.py``; imports optuna when used)
"""

from rapidfire_core.automl.asha import RFSuccessiveHalving
from rapidfire_core.automl.configs import RFDPOConfig, RFGRPOConfig, RFLoraConfig, RFSFTConfig
from rapidfire_core.automl.knobs import List, Range
from rapidfire_core.automl.model_config import RFModelConfig
from rapidfire_core.automl.optuna_search import RFOptuna
from rapidfire_core.automl.pbt import RFPopulationBased
from rapidfire_core.automl.search import RFGridSearch, RFRandomSearch, RunSpec

__all__ = [
    "List",
    "RFDPOConfig",
    "RFGRPOConfig",
    "RFGridSearch",
    "RFLoraConfig",
    "RFModelConfig",
    "RFOptuna",
    "RFPopulationBased",
    "RFRandomSearch",
    "RFSFTConfig",
    "RFSuccessiveHalving",
    "Range",
    "RunSpec",
]
