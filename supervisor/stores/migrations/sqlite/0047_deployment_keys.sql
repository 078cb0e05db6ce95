-- The key ids a deployment uses, one row per use (name 'receipt.signing': the receipt signing key its nodes
-- sign with). Nodes with keys of their own (separate data dirs, no shared STOCKADE_SIGNING_KEY_FILE)
-- signed receipts with keys the other nodes did not publish: a node's start-up now compares its keys with
-- this row and is refused when none of them is the deployment's (supervisor/audit/signing_check.py).
-- Only the id (a hash of the public key) is kept: a key is never read from the database.
CREATE TABLE deployment_keys (
    name TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    updated_at REAL NOT NULL
);
