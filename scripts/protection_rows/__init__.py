"""Protection rows by area; each module registers rows with ``protections.row``.

One module per area keeps concurrent work apart: ``disclosure.py`` (statistics,
checks, PSI), ``learning.py`` (vertical LR, horizontal FL, approvals),
``ledger.py``, ``ops.py``, ``console.py``, ``evidence.py`` (transport and
identity rows added while auditing the suite). A module imports ``row``,
``_patch`` and ``_original`` from ``protections``.
"""
