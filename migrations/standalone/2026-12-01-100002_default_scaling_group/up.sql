-- A fresh standalone install has the scaling group agents join when a registration names none, as a Backend.AI
-- cluster set up from its example fixtures does.
INSERT INTO scaling_groups (name, description) VALUES ('default', 'Agents registered without a scaling group.')
ON CONFLICT (name) DO NOTHING;
