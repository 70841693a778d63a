-- An answered call whose engine result did not come within the grace period is decided on the
-- carrier's outcome; `result_overdue_at` says when. A result that comes later is still merged
-- into the record (transcript, recording, costs, metrics) once, and the column is cleared.
ALTER TABLE calls ADD COLUMN result_overdue_at BIGINT;
