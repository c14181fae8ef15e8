"""Least-privilege database roles: per service a *migration* role that owns its schema and
a *runtime* role that may only read and write its tables (docs/security.md#database-roles).

Names follow the schema: `<schema>_migrator` and `<schema>_runtime` (`clearing_migrator`,
`clearing_runtime`). What the runtime role may do:

- USAGE on its own schema, nothing on any other (no USAGE, so not even a table's name
  resolves), no CREATE anywhere (no DDL: it cannot create, alter, drop or truncate);
- SELECT, INSERT, UPDATE, DELETE on the schema's tables and USAGE on its sequences, for
  tables the migration role creates later too (ALTER DEFAULT PRIVILEGES FOR ROLE);
- on the tables of RESTRICTED only what is listed there: the Alembic version table is
  read (readiness), the append-only `audit_events` is read and appended to. Whoever
  migrates reapplies these after every upgrade (`restrict_statements`, run by
  shared/migrations.py), so they hold whatever the runtime role is called and however
  the table came to be granted.

`provision()` creates (or updates) both roles and the grants, as a role that may create
roles (a superuser in development: `make up`, the tests); `python -m shared.db_roles sql
SCHEMA…` prints the same statements for a DBA or an init script, with psql variables for
the passwords. Passwords are sent as SCRAM-SHA-256 verifiers, never in clear, so they
appear in no server log.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from shared.db import check_schema_name

MIGRATOR_SUFFIX = "_migrator"
RUNTIME_SUFFIX = "_runtime"
_MAX_NAME = 63  # PostgreSQL's identifier length

RUNTIME_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
# Tables every grantee but their owner holds only these privileges on (when they exist).
RESTRICTED: Mapping[str, tuple[str, ...]] = {
    "alembic_version": ("SELECT",),
    "audit_events": ("SELECT", "INSERT"),
}


@dataclass(frozen=True)
class Roles:
    """The two roles of one service's schema."""

    schema: str
    migrator: str
    runtime: str


def roles_for(schema: str) -> Roles:
    check_schema_name(schema)
    migrator, runtime = schema + MIGRATOR_SUFFIX, schema + RUNTIME_SUFFIX
    if max(len(migrator), len(runtime)) > _MAX_NAME:
        raise ValueError(f"schema name {schema!r} too long for its role names")
    return Roles(schema, migrator, runtime)


def new_password() -> str:
    return secrets.token_urlsafe(24)


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677), so
    CREATE/ALTER ROLE carries no password in clear. Same format as libpq's
    PQencryptPasswordConn."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def restrict_statements(schema: str) -> list[str]:
    """Reduces every non-owner grantee of each RESTRICTED table of `schema` to the
    privileges listed for it; nothing happens for a table that does not exist or that
    nobody but its owner holds rights on (a single-role development database). Run by the
    table's owner (the migration role) or a superuser."""
    out = []
    for table, privileges in RESTRICTED.items():
        qualified = f"{_ident(schema)}.{_ident(table)}"
        out.append(f"""
DO $restrict$
DECLARE grantee text;
BEGIN
  FOR grantee IN
    SELECT DISTINCT a.grantee::regrole::text
    FROM pg_class c, aclexplode(c.relacl) a
    WHERE c.oid = to_regclass({_literal(qualified)})
      AND a.grantee <> c.relowner AND a.grantee <> 0
  LOOP
    EXECUTE format('REVOKE ALL ON TABLE %s FROM %s', {_literal(qualified)}, grantee);
    EXECUTE format('GRANT {", ".join(privileges)} ON TABLE %s TO %s',
                   {_literal(qualified)}, grantee);
  END LOOP;
END
$restrict$""")
    return out


def _adopt_statement(schema: str, migrator: str) -> str:
    """Hands every object of `schema` the migration role does not own to it: a schema
    migrated before the roles existed (by a superuser, say) keeps working, and the next
    migration may alter what is there. Sequences owned by a column follow their table."""
    s, m = _literal(schema), _literal(migrator)
    return f"""
DO $adopt$
DECLARE r record;
BEGIN
  FOR r IN
    SELECT c.relname, CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
             WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE'
             WHEN 'c' THEN 'TYPE' ELSE 'TABLE' END AS kind
    FROM pg_class c
    WHERE c.relnamespace = to_regnamespace({s}) AND c.relowner <> to_regrole({m})
      AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'c')
      AND NOT (c.relkind = 'S' AND EXISTS (
        SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
          AND d.objid = c.oid AND d.deptype IN ('a', 'i')))
  LOOP
    EXECUTE format('ALTER %s %I.%I OWNER TO %I', r.kind, {s}, r.relname, {m});
  END LOOP;
  FOR r IN
    SELECT p.oid::regprocedure::text AS routine FROM pg_proc p
    WHERE p.pronamespace = to_regnamespace({s}) AND p.proowner <> to_regrole({m})
      AND p.prokind IN ('f', 'p')
  LOOP
    EXECUTE format('ALTER ROUTINE %s OWNER TO %I', r.routine, {m});
  END LOOP;
  FOR r IN
    SELECT t.oid::regtype::text AS name, CASE t.typtype WHEN 'd' THEN 'DOMAIN'
             ELSE 'TYPE' END AS kind
    FROM pg_type t
    WHERE t.typnamespace = to_regnamespace({s}) AND t.typowner <> to_regrole({m})
      AND t.typtype IN ('e', 'd', 'r')
  LOOP
    EXECUTE format('ALTER %s %s OWNER TO %I', r.kind, r.name, {m});
  END LOOP;
END
$adopt$"""


def provision_statements(
    roles: Roles, migrator_password: str, runtime_password: str, *,
    existing: Iterable[str] = (),
) -> list[str]:
    """The SQL that makes `roles` what the module docstring says. The passwords are SQL
    expressions: a quoted SCRAM verifier, or a psql variable (`:'billing_migrator_pw'`).
    Roles in `existing` are altered instead of created (their password replaced)."""
    schema, m, r = _ident(roles.schema), _ident(roles.migrator), _ident(roles.runtime)
    existing = set(existing)
    limits = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
    out = []
    for name, quoted, password in ((roles.migrator, m, migrator_password),
                                   (roles.runtime, r, runtime_password)):
        verb = "ALTER" if name in existing else "CREATE"
        out.append(f"{verb} ROLE {quoted} {limits} PASSWORD {password}")
    tables = ", ".join(RUNTIME_TABLE_PRIVILEGES)
    out += [
        f"CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {m}",
        f"ALTER SCHEMA {schema} OWNER TO {m}",
        _adopt_statement(roles.schema, roles.migrator),
        # Only the owner creates in the schema; the runtime role may look up names in it.
        f"REVOKE ALL ON SCHEMA {schema} FROM PUBLIC",
        f"REVOKE ALL ON SCHEMA {schema} FROM {r}",
        f"GRANT USAGE ON SCHEMA {schema} TO {r}",
        f"GRANT {tables} ON ALL TABLES IN SCHEMA {schema} TO {r}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {r}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {m} IN SCHEMA {schema} GRANT {tables} "
        f"ON TABLES TO {r}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {m} IN SCHEMA {schema} GRANT USAGE "
        f"ON SEQUENCES TO {r}",
        *restrict_statements(roles.schema),
        # For people using psql as either role; the services set it on every connection.
        f"ALTER ROLE {m} SET search_path = {schema}",
        f"ALTER ROLE {r} SET search_path = {schema}",
    ]
    return out


def with_role(url: str, role: str, password: str) -> str:
    """`url` (the administrator's) with another user and password: same host and database."""
    return make_url(url).set(username=role, password=password).render_as_string(
        hide_password=False
    )


async def provision(admin_url: str, roles: Roles, migrator_password: str,
                    runtime_password: str) -> None:
    """Creates or updates both roles of one schema, in one transaction, as `admin_url`'s
    role (a superuser, or one that may create roles and owns the database)."""
    engine = create_async_engine(admin_url)
    try:
        async with engine.begin() as conn:
            # One provisioning at a time: concurrent CREATE ROLE of the same name would
            # fail one of them (a cluster-wide object; this lock is too).
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('clearhouse.db_roles'))"))
            found = await conn.execute(
                text("SELECT rolname FROM pg_roles WHERE rolname IN (:m, :r)"),
                {"m": roles.migrator, "r": roles.runtime},
            )
            existing = {row[0] for row in found}
            for statement in provision_statements(
                roles, _literal(scram_verifier(migrator_password)),
                _literal(scram_verifier(runtime_password)), existing=existing,
            ):
                # As is: a verifier's ':' must not read as a bind parameter.
                await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()


async def may_provision(admin_url: str) -> bool:
    """True when `admin_url`'s role may create roles and schemas (a superuser, or
    CREATEROLE): `make up` then runs every service with its own two roles."""
    engine = create_async_engine(admin_url)
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(text(
                "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
            ))).first()
            return bool(row and row[0])
    finally:
        await engine.dispose()


def passwords(folder: Path, roles: Roles) -> tuple[str, str]:
    """The development passwords of both roles, made on first use and kept in `folder`
    (owner-only files, like the development PKI's keys)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    out = []
    for role in (roles.migrator, roles.runtime):
        path = folder / f"{role}.password"
        if not path.exists():
            path.touch(0o600)
            path.write_text(new_password() + "\n", encoding="utf-8")
        out.append(path.read_text(encoding="utf-8").strip())
    return out[0], out[1]


def sql_script(schemas: Sequence[str], *, dev_passwords: bool = False) -> str:
    """The provisioning SQL of `schemas` as one psql script: passwords from psql variables
    (`-v billing_migrator_pw=…`), or with `dev_passwords` each role's own name (compose's
    throwaway development database, deploy/postgres/init.sql)."""
    if dev_passwords:
        how = ["-- DEVELOPMENT ONLY: every role's password is its own name."]
    else:
        how = ["-- Set the passwords as psql variables, e.g.",
               "--   psql -v billing_migrator_pw=... -v billing_runtime_pw=... -f roles.sql"]
    lines = [
        "-- Least-privilege roles of Clearhouse (generated by `python -m shared.db_roles sql`):",
        "-- per schema <schema>_migrator owns it and migrates; <schema>_runtime reads and",
        "-- writes its tables (docs/security.md#database-roles).",
        *how,
        "",
    ]
    for schema in schemas:
        roles = roles_for(schema)
        lines.append(f"-- {schema}")
        if dev_passwords:
            given = (_literal(roles.migrator), _literal(roles.runtime))
        else:
            given = (f":'{roles.migrator}_pw'", f":'{roles.runtime}_pw'")
        for statement in provision_statements(roles, *given):
            lines.append(statement.strip() + ";")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.db_roles")
    sub = parser.add_subparsers(dest="command", required=True)
    sql = sub.add_parser("sql", help="print the SQL creating both roles of each schema")
    sql.add_argument("schemas", nargs="+", metavar="SCHEMA")
    sql.add_argument("--dev-passwords", action="store_true",
                     help="each role's password is its name (development only)")
    args = parser.parse_args(argv)
    sys.stdout.write(sql_script(args.schemas, dev_passwords=args.dev_passwords))
    return 0


if __name__ == "__main__":
    sys.exit(main())
