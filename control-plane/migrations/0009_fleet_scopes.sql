-- Fleet tokens get a scope and engine tokens a host. `engine` tokens heartbeat, read bots'
-- runtime configs, post results and search knowledge; `dialler` tokens read the fleet's hosts
-- and reserve slots. An engine token heartbeats as one host only: the one it was created for,
-- or else the first one it heartbeats as (`host_id` and `bound_at` are written then, in the
-- heartbeat's transaction). Tokens made before scopes existed become unbound engine tokens.
ALTER TABLE fleet_tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'engine' CHECK (scope IN ('engine', 'dialler'));
ALTER TABLE fleet_tokens ADD COLUMN host_id TEXT;
ALTER TABLE fleet_tokens ADD COLUMN bound_at BIGINT;
CREATE INDEX fleet_tokens_host ON fleet_tokens (host_id);
