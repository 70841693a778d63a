-- A handoff whose call stays up for a person on the Agent Desk to take over from the browser
-- (`live`, 0 or 1), and the engine host carrying that call (the fleet token's host).
ALTER TABLE handoffs ADD COLUMN live BIGINT NOT NULL DEFAULT 0;
ALTER TABLE handoffs ADD COLUMN host_id TEXT;
