-- Engine slots follow the call. A placed call remembers the engine host and the fleet
-- reservation it was routed with (and when that reservation lapses on its own), so the slot is
-- given back as soon as the call ends without reaching the engine, and a call whose host died
-- is decided without waiting for a result that cannot come.
ALTER TABLE calls ADD COLUMN engine_host TEXT;
ALTER TABLE calls ADD COLUMN reservation TEXT;
ALTER TABLE calls ADD COLUMN reservation_until BIGINT;

-- Reservations given back that their host may hold: sent in its heartbeat answers until it
-- confirms them (`released`) or they lapse on their own.
CREATE TABLE reservation_releases (
    token TEXT PRIMARY KEY,
    host_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX reservation_releases_host ON reservation_releases (host_id);
CREATE INDEX reservation_releases_expiry ON reservation_releases (expires_at);

-- Since when the carrier could not be asked about a live call (an outage): its lease is kept
-- for a bounded grace from then, and the streak ends when the carrier answers again.
ALTER TABLE call_leases ADD COLUMN unknown_since BIGINT;
