"""The command line's shared behaviour: one line and exit status 2 for bad input."""

import pytest

from app.cli import main


@pytest.mark.parametrize("command", [["devices"], ["runs"], ["models"]])
def test_a_named_config_that_is_missing_or_malformed_is_refused_by_every_command(
    command, tmp_path, capsys
):
    assert main(["--config", str(tmp_path / "absent.toml"), *command]) == 2
    assert capsys.readouterr().err.strip() == (
        f"specdeck: config file {tmp_path / 'absent.toml'} does not exist"
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("[backends.tpu]\npython = 'x'\n")
    assert main([*command, "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown backend [backends.tpu]" in err
