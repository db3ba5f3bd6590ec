"""Switch off one fedgov guard in every Python process that starts with this folder on PYTHONPATH.

Used only by ``scripts/check_protections.py``: ``FEDGOV_DISABLE_GUARD`` names a
row of ``scripts/protections.py``; each process writes ``<pid>.ok`` (or
``<pid>.err`` with the reason) into ``FEDGOV_GUARD_MARK`` so the checker can
tell a guard that was really switched off from a hook that failed.
"""

import os
import sys

_row = os.environ.get("FEDGOV_DISABLE_GUARD")
if _row:
    # fedgov/__init__.py overwrites this variable on import; keep what the process inherited
    if "GRPC_SSL_CIPHER_SUITES" in os.environ:
        os.environ.setdefault("FEDGOV_GUARD_SAVED_SUITES", os.environ["GRPC_SSL_CIPHER_SUITES"])
    _mark = os.environ.get("FEDGOV_GUARD_MARK", "")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        import protections

        protections.disable(_row)
        _status, _text = "ok", _row
    except Exception as _exc:  # noqa: BLE001 - reported to the checker, never hidden
        _status, _text = "err", f"{type(_exc).__name__}: {_exc}"
    finally:
        sys.path.pop(0)
    if _mark:
        with open(os.path.join(_mark, f"{os.getpid()}.{_status}"), "w") as _f:
            _f.write(_text)
