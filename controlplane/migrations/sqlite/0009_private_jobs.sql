-- A request through a `local` service or to a `local` worker is recorded as private: only
-- the identity that sent it sees the job (the service was its alone to use), not the whole
-- team. Jobs recorded before stay visible to their team.
ALTER TABLE jobs ADD COLUMN private BOOLEAN NOT NULL DEFAULT FALSE;
