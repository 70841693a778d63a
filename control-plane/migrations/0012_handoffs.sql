-- Handoffs from bots to people (the Agent Desk): one row per handoff id, posted once by an
-- engine's handoff outbox (a repeat is the same row). `status`: waiting, claimed, resolved.
CREATE TABLE handoffs (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    call_id TEXT NOT NULL,
    bot_id TEXT,
    caller TEXT NOT NULL,
    reason TEXT NOT NULL,
    summary TEXT NOT NULL,
    transcript TEXT NOT NULL,
    status TEXT NOT NULL,
    claimed_by TEXT,
    claimed_at BIGINT,
    resolution TEXT,
    resolved_at BIGINT,
    notes TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX handoffs_org_status ON handoffs (org_id, status, created_at);
