-- Dev-only bootstrap (compose): runs once, on first start of an empty volume.
-- Mirrors prod: one login role per service, each owning its own schema.
-- Passwords here are throwaway dev values; prod credentials live in the
-- `clearhouse-db` Secret (see deploy/k8s/secret.example.yaml).
DO $$
DECLARE svc text;
BEGIN
  FOREACH svc IN ARRAY ARRAY['billing', 'clearing', 'settlement'] LOOP
    EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', svc, svc);
    EXECUTE format('CREATE SCHEMA %I AUTHORIZATION %I', svc, svc);
    -- Unqualified objects (e.g. alembic_version) land in the service's schema;
    -- PG15+ no longer lets ordinary roles create in `public`.
    EXECUTE format('ALTER ROLE %I SET search_path = %I', svc, svc);
    -- CREATE SCHEMA IF NOT EXISTS checks database CREATE privilege before the
    -- existence check, so migrations that issue it need this grant.
    EXECUTE format('GRANT CREATE ON DATABASE %I TO %I', current_database(), svc);
  END LOOP;
END
$$;
