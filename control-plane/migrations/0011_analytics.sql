-- What analytics reads of a call without opening its result body: the answered turns'
-- latencies (end of the caller's speech to the answer's first frame on the wire, ms,
-- comma-separated) and the priced cost lines as JSON `[[provider, amount], …]`.
ALTER TABLE calls ADD COLUMN turn_ms TEXT;
ALTER TABLE calls ADD COLUMN cost_lines TEXT;
