DELETE FROM scaling_groups s
WHERE s.name = 'default' AND NOT EXISTS (SELECT 1 FROM agents a WHERE a.scaling_group = s.name);
