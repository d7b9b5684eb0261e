-- Issue 10 (trust): who may use a worker directly and the services it announces (`local`:
-- its owner; `team`), and what it announced when it last came online (JSON array of names).
ALTER TABLE workers ADD COLUMN visibility TEXT NOT NULL DEFAULT 'team';
ALTER TABLE workers ADD COLUMN announced TEXT NOT NULL DEFAULT '[]';
