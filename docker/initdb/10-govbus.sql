-- The govbus registry and Government Affairs Cloud database, beside Airflow's metadata database.
-- Runs once, when the PostgreSQL volume is first initialised.
CREATE DATABASE govbus;
