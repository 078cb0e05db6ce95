"""Hash-chained audit log and signed receipts."""

from supervisor.audit.canonical import args_hash, canonical, sha256_hex
from supervisor.audit.chain import GENESIS, ChainBreak, Sealer, record_hash, verify_chain
from supervisor.audit.receipts import build_receipt, sign_receipt, verify_receipt
from supervisor.audit.recorder import AuditRecorder

__all__ = [
    "GENESIS", "AuditRecorder", "ChainBreak", "Sealer", "args_hash", "build_receipt", "canonical",
    "record_hash", "sha256_hex", "sign_receipt", "verify_chain", "verify_receipt",
]
