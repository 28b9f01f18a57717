"""Every node's audit log: append-only, hash-chained, signed JSON lines (``log.py``, ``verify.py``).

``AuditLog.open(data_dir, identity).append("promotion", version=3, to="staging")`` is the
whole writing API; ``prime audit verify --data-dir D`` checks a log (``cli.py``).
"""

from prime.audit.log import AUDIT_FILE, HEAD_FILE, AuditLog, operator_name
from prime.audit.verify import AuditReport, verify_log

__all__ = ["AUDIT_FILE", "HEAD_FILE", "AuditLog", "AuditReport", "operator_name", "verify_log"]
