DROP TABLE IF EXISTS keypair_resource_usage;
DROP TABLE IF EXISTS keypairs;
DROP TABLE IF EXISTS kernels;
DROP TABLE IF EXISTS sessions;
DROP TABLE IF EXISTS agents;
DROP TABLE IF EXISTS scaling_groups;
DROP TYPE IF EXISTS agentstatus;
