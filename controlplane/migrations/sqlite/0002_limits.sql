-- Tier limits of issue 10: public services per team, teams a user may create.
-- NULL max_teams: unlimited (operators); new users may create one team (the free tier).
ALTER TABLE teams ADD COLUMN public_services BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE teams ADD COLUMN creator_id INTEGER REFERENCES users(id) ON DELETE SET NULL;
ALTER TABLE users ADD COLUMN max_teams INTEGER DEFAULT 1;
UPDATE users SET max_teams = NULL WHERE operator = TRUE;
