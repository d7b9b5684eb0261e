-- Who reads a job (issue 25): a job through a `team` service was every member's to read,
-- secrets in its command, arguments and output included. Now each job says who reads it:
-- `team` (every member: the service's `history` is `team`), `sender_and_admins` (the
-- default) or `sender` (a `local` service or worker, as `private` said). Jobs stored
-- before are read as the new default says: their sender and the team's admins.
ALTER TABLE services ADD COLUMN history TEXT NOT NULL DEFAULT 'sender';
ALTER TABLE jobs ADD COLUMN readers TEXT NOT NULL DEFAULT 'sender_and_admins';
UPDATE jobs SET readers = 'sender' WHERE private;
ALTER TABLE jobs DROP COLUMN private;
-- The install's team: the one made with the first admin, which `up` logs in to at each
-- start (and the configuration it wrote names). It is never deleted, nor left by an
-- operator. Stores made before: the first team, if it is still the `main` bootstrap made.
ALTER TABLE teams ADD COLUMN install BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE teams SET install = TRUE WHERE name = 'main' AND id = (SELECT MIN(id) FROM teams);
