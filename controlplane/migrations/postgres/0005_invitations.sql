-- Team invitations: an admin invites an existing user, who accepts (joins with the role) or
-- declines. One pending invitation per user and team; gone with its team or its user.
CREATE TABLE invitations (
    team_id BIGINT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    invited_by TEXT NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX invitations_user ON invitations (user_id);
-- Bumped whenever the user's secret changes: a JWT carries the value it was issued at
-- (`sgen`), and one issued before the change is refused by the API and the broker.
ALTER TABLE users ADD COLUMN secret_gen BIGINT NOT NULL DEFAULT 0;
