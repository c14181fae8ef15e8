"""The CLI's contract with its caller: exit codes, configuration, help, money text."""

from __future__ import annotations

from decimal import Decimal

import pytest
import typer
from typer.testing import CliRunner

from services.cli import config as cfg
from services.cli.main import app
from services.cli.money import format_minor, parse_major
from tests.cli.conftest import Cli


def _commands(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            out += _commands(command, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


ALL = _commands(typer.main.get_command(app))


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    assert len(ALL) >= 40
    for path in ALL:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, path
        assert "Example: clearhouse " in result.stdout or "Example: CLEARHOUSE_" in result.stdout, path


def test_usage_errors_exit_2():
    runner = CliRunner()
    assert runner.invoke(app, ["rules", "list", "--nope"]).exit_code == 2
    assert runner.invoke(app, ["runs", "start"]).exit_code == 2
    result = runner.invoke(app, ["runs", "start", "2026-02-30"])
    assert result.exit_code == 2 and "is not a date" in result.stderr


def test_an_unreachable_service_exits_3(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('settlement_address = "127.0.0.1:1"\nbilling_address = "127.0.0.1:1"\n'
                    "timeout_s = 2\n")
    runner = CliRunner()
    result = runner.invoke(app, ["--config", str(conf), "profiles", "list"])
    assert result.exit_code == 3 and "unreachable: settlement: UNAVAILABLE" in result.stderr
    result = runner.invoke(app, ["accounts", "balance", "M1"],
                           env={"CLEARHOUSE_CONFIG": str(conf)})
    assert result.exit_code == 3


def test_config_file_then_environment(tmp_path, monkeypatch):
    conf = tmp_path / "c.toml"
    conf.write_text('settlement_address = "10.0.0.5:50053"\ntoken = "s3cret"\n'
                    'ca_cert = "/etc/ca.pem"\n')
    loaded = cfg.load(str(conf), {"CLEARHOUSE_BILLING_ADDRESS": "b:1"})
    assert (loaded.settlement_address, loaded.billing_address) == ("10.0.0.5:50053", "b:1")
    assert loaded.tls and loaded.bearer_token() == "s3cret" and loaded.source == str(conf)
    env = {"CLEARHOUSE_CONFIG": str(conf), "CLEARHOUSE_SETTLEMENT_ADDRESS": "s:2"}
    assert cfg.load(None, env).settlement_address == "s:2"
    token = tmp_path / "token"
    token.write_text("from-file\n")
    assert cfg.load(None, {"CLEARHOUSE_CONFIG": str(conf), "CLEARHOUSE_TOKEN": "",
                           "CLEARHOUSE_TOKEN_FILE": str(token)}).bearer_token() == "s3cret"
    conf.write_text(f'token_file = "{token}"\n')
    assert cfg.load(str(conf), {}).bearer_token() == "from-file"
    conf.write_text('adress = "typo"\n')
    with pytest.raises(cfg.ConfigError, match="unknown keys adress"):
        cfg.load(str(conf), {})
    runner = CliRunner()
    result = runner.invoke(app, ["--config", str(conf), "profiles", "list"])
    assert result.exit_code == 2 and "unknown keys adress" in result.stderr
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cfg.load(None, {}).source == "defaults"  # no ~/.config/clearhouse/cli.toml
    (tmp_path / ".config" / "clearhouse").mkdir(parents=True)
    (tmp_path / ".config" / "clearhouse" / "cli.toml").write_text('clearing_address = "c:3"\n')
    assert cfg.load(None, {}).clearing_address == "c:3"
    conf.write_text(f'token_file = "{token}"\n')
    shown = runner.invoke(app, ["config"], env={"CLEARHOUSE_CONFIG": str(conf), "COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "from-file" not in shown.stdout and "token" in shown.stdout and "set" in shown.stdout


async def test_credentials_are_sent_as_a_bearer_token(cli: Cli, tmp_path):
    """The hook for the services' authentication: the token goes out as metadata. Our
    services ignore it today, so the call still succeeds; the request id echoes back."""
    conf = tmp_path / "t.toml"
    conf.write_text(cli.config.read_text() + 'token = "abc"\n')
    from services.cli.client import Clients
    from services.cli.config import load

    clients = Clients(load(str(conf), {}))
    try:
        assert clients.settlement._metadata == (("authorization", "Bearer abc"),)
    finally:
        clients.close()


@pytest.mark.parametrize(("minor", "currency", "text"), [
    (0, "CNY", "0.00"), (5, "CNY", "0.05"), (-5, "CNY", "-0.05"), (123456789, "CNY", "1,234,567.89"),
    (9_223_372_036_854_775_807, "CNY", "92,233,720,368,547,758.07"), (1500, "JPY", "1,500"),
    (-1234, "KWD", "-1.234"),
])
def test_money_text_is_exact(minor, currency, text):
    assert format_minor(minor, currency) == text
    assert parse_major(text, currency) == minor


def test_money_parsing_refuses_what_it_cannot_represent():
    assert parse_major(Decimal("0.10"), "CNY") == 10
    for bad in ("0.001", "abc", "NaN", "Infinity", ""):
        with pytest.raises(ValueError):
            parse_major(bad, "CNY")
    with pytest.raises(ValueError):
        parse_major("1", "XXX")


def test_docs_cli_lists_every_command():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    missing = [" ".join(p) for p in ALL
               if f"`{' '.join(p)}`" not in text and f"`clearhouse {' '.join(p)}`" not in text]
    assert missing == []


def test_every_command_is_run_against_the_real_stack_by_some_test():
    """Keeps the promise of docs/cli.md: each command has a test calling it through
    `cli(...)` (the real services), not only its --help."""
    import re
    from pathlib import Path

    calls = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        for args in re.findall(r'\bcli\(((?:"[^"]*",\s*)*"[^"]*")', path.read_text()):
            words = re.findall(r'"([^"]*)"', args)
            calls.add(tuple(words[:3]))
            calls.add(tuple(words[:2]))
            calls.add(tuple(words[:1]))
    runner_only = {("config",)}
    assert ("runs", "start") in calls and ("merchants", "balance") in calls  # shown by CliRunner in test_config_file_then_environment
    missing = [" ".join(p) for p in ALL if p not in calls and p not in runner_only]
    assert missing == []
