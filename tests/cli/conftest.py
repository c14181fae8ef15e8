"""The CLI against the real stack: billing, clearing and settlement as grpc.aio servers
on port 0 in throwaway schemas, and the payout simulator. Each command runs through
typer's CliRunner in a worker thread (the servers live on this event loop), with a
config file pointing at the stack, exactly as an operator's shell would."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from services.cli.main import app
from tests.e2e.stack import Stack, start_stack, stop_stack
from tests.support import security


@dataclass
class Cli:
    stack: Stack
    config: Path
    runner: CliRunner
    # The second admin's config (bea), for four eyes: `cli(..., as_="bea")`.
    second: Path | None = None

    async def __call__(self, *args: str, code: int = 0, as_: str = "ada") -> Result:
        config = self.second if as_ == "bea" and self.second is not None else self.config
        env = {"CLEARHOUSE_CONFIG": str(config), "COLUMNS": "250"}
        result = await asyncio.to_thread(self.runner.invoke, app, list(args), env=env)
        assert result.exit_code == code, (args, result.exit_code, result.output,
                                          result.exception)
        return result

    async def four_eyes(self, service: str, *args: str, code: int = 0) -> Result:
        """A guarded command as operations run it: refused as it is (APPROVAL_REQUIRED,
        with the hint), filed with --request-approval as ada, then each approval it
        filed approved by bea (`code`: the last approval's exit code); the last
        approval's output."""
        refused = await self(*args, code=1)
        assert "APPROVAL_REQUIRED" in refused.stderr and "--request-approval" in refused.stderr
        filed = await self(*args, "--request-approval", "cli test")
        ids = re.findall(r"approval (\S+) filed", filed.stdout)
        assert ids, filed.stdout
        result = filed
        for i, approval_id in enumerate(ids):
            result = await self(service, "approvals", "approve", approval_id, as_="bea",
                                code=code if i == len(ids) - 1 else 0)
        return result

    async def approve_pending(self, service: str) -> list[str]:
        """Approves, as the second admin, every pending approval of `service` (what the
        test's `--request-approval` commands filed); their ids."""
        listed = await self(service, "approvals", "list", "--json", as_="bea")
        ids = [a["approval_id"] for a in json.loads(listed.stdout)]
        for approval_id in ids:
            await self(service, "approvals", "approve", approval_id, as_="bea")
        return ids


def write_config(folder: Path, s: Stack, person: str = "ada") -> Path:
    path = folder / f"cli-{person}.toml"
    pki = security.pki()
    path.write_text(
        f'billing_address = "{s.billing.address}"\n'
        f'clearing_address = "{s.clearing.address}"\n'
        f'settlement_address = "{s.settlement.address}"\n'
        f'payout_simulator_address = "{s.simulator.address}"\n'
        "timeout_s = 20\n"
        # As the operations people call: TLS with the tools' certificate, an admin's token.
        f'ca_cert = "{pki.ca_file}"\n'
        f'client_cert = "{pki.cert_file("tool")}"\n'
        f'client_key = "{pki.key_file("tool")}"\n'
        f'token_file = "{pki.token_file(person)}"\n')
    return path


@pytest.fixture(scope="module")
async def cli_stack(pg_url: str) -> AsyncIterator[Stack]:
    s = await start_stack(pg_url)
    yield s
    await stop_stack(s)


@pytest.fixture(scope="module")
def cli(cli_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    folder = tmp_path_factory.mktemp("cli")
    return Cli(cli_stack, write_config(folder, cli_stack), CliRunner(),
               write_config(folder, cli_stack, "bea"))
