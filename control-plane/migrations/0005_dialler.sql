-- Campaign execution. Dialler processes heartbeat here and lease the campaigns they run; every
-- live call holds one lease (a campaign's live calls are the unexpired leases, never a
-- counter); call records gain what the dialler and the carrier's call-end record add.
CREATE TABLE diallers (
    id TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);

CREATE TABLE campaign_leases (
    campaign_id TEXT PRIMARY KEY REFERENCES campaigns (id) ON DELETE CASCADE,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE call_leases (
    call_id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    campaign_id TEXT,
    assistant_id TEXT,
    expires_at BIGINT NOT NULL
);
CREATE INDEX call_leases_campaign ON call_leases (campaign_id, expires_at);
CREATE INDEX call_leases_expiry ON call_leases (expires_at);

-- `status`: live (placed, no call-end record yet), ended (call-end record in), final
-- (disposition and retry decided, webhook queued). Rows the engine reports alone are final.
ALTER TABLE calls ADD COLUMN status TEXT NOT NULL DEFAULT 'final';
ALTER TABLE calls ADD COLUMN attempt BIGINT;
ALTER TABLE calls ADD COLUMN carrier TEXT;
ALTER TABLE calls ADD COLUMN carrier_call_id TEXT;
ALTER TABLE calls ADD COLUMN cdr_token TEXT;
ALTER TABLE calls ADD COLUMN cdr_at BIGINT;
ALTER TABLE calls ADD COLUMN result_at BIGINT;
ALTER TABLE calls ADD COLUMN expects_result BIGINT NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN first_audio_ms BIGINT;
ALTER TABLE calls ADD COLUMN assistant_id TEXT;
CREATE INDEX calls_status ON calls (status, campaign_id);
CREATE INDEX calls_carrier ON calls (carrier_call_id);
