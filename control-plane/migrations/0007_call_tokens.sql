-- Keys that sign call tokens (`cxb_contract::call_token`). Signers use the newest key that
-- engines have had time to learn; every key not yet retired verifies. Engines receive the live
-- keys in each heartbeat's answer. A rotation adds a key and retires the older ones an hour
-- later, so tokens already issued stay valid.
CREATE TABLE call_token_keys (
    id TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retire_at BIGINT
);
