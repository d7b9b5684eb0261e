-- Issue 28: a tier sets the teams each admin of the team may create (the seed's price table:
-- free 1, basic 1, advanced 2; NULL: unlimited). A user's `max_teams` is now an allowance an
-- operator gave them, and NULL means none of their own: they may create as many teams as the
-- most generous tier among the teams they are an admin of allows (1 when none). Teams made
-- before get their tier's number (1 for limits of their own, as before); users with the old
-- default of 1 follow the tier (the same 1 in the free tier). A non-operator whose NULL meant
-- "unlimited" follows the tier from now on.
ALTER TABLE teams ADD COLUMN max_teams INTEGER;
UPDATE teams SET max_teams = 1 WHERE max_workers IS NOT NULL OR max_services IS NOT NULL
    OR max_triggers IS NOT NULL OR max_users IS NOT NULL OR public_services = FALSE;
UPDATE teams SET max_teams = 2 WHERE max_workers = 100 AND max_services = 20
    AND max_triggers = 51 AND max_users = 25 AND public_services = TRUE;
UPDATE users SET max_teams = NULL WHERE max_teams = 1;
