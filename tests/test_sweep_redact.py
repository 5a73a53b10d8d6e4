"""Credentials never leave optsweep unredacted: URLs, free text, a Ray job's command line, the CLI."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from analysis._escape import redact_uris
from sweep.cluster import OUT_ENV, build_submission, redact_text
from sweep.config import redact


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql://bob:hunter2@db:5432/x", "postgresql://bob:***@db:5432/x"),
    ("s3://AKIA:se/cr@t:x@bucket/runs?region=eu", "s3://AKIA:***@bucket/runs?region=eu"),  # '/', '@', ':'
    ("s3://AKIA:pa?ss#w@bucket/x", "s3://AKIA:***@bucket/x"),
    ("postgresql://u:p@s/s@h/db?options=x", "postgresql://u:***@h/db?options=x"),
    ("https://ghp_tokenonly@github.com/o/r", "https://***@github.com/o/r"),  # a lone user part may be a token
    ("s3://u:p@[::1]:9000/b", "s3://u:***@[::1]:9000/b"),
    ("s3://bucket/v@2/x", "s3://bucket/v@2/x"),  # an '@' in the path is no password
    ("sqlite:////shared/study.db", "sqlite:////shared/study.db"),
    ("runs/sweep", "runs/sweep"),
    ("s3://b/x?aws_access_key_id=AKIA&aws_secret_access_key=SECRET&region=eu-west-1",
     "s3://b/x?aws_access_key_id=***&aws_secret_access_key=***&region=eu-west-1"),
    ("abfs://c@acct.dfs.core.windows.net/p?account_key=K%2F1", "abfs://c@acct.dfs.core.windows.net/p?account_key=***"),
    ("https://h/o?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F2024&X-Amz-Signature=f00&X-Amz-Security-Token=T",
     "https://h/o?X-Amz-Algorithm=AWS4&X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***"),
    ("https://a.blob.core.windows.net/c?sv=2022&se=2030&sp=r&sig=abc%3D", "https://a.blob.core.windows.net/c?sv=2022&se=2030&sp=r&sig=***"),
    ("s3://b/x?SAS=1&Token=2&PASSWORD=3&signature=4&secret=5&key=6&credential_id=7&endpoint_override=h:9000",
     "s3://b/x?SAS=***&Token=***&PASSWORD=***&signature=***&secret=***&key=***&credential_id=***&endpoint_override=h:9000"),
])
def test_redact(url: str, expected: str) -> None:
    assert redact(url) == expected


_PW = st.text(st.sampled_from("abcXYZ019/@:?#%+=!$&;, '\"<>"), min_size=1, max_size=24)


@given(password=_PW, user=st.sampled_from(["AKIA", "bob", "u"]),
       tail=st.sampled_from(["bucket/runs/a", "bucket", "db:5432/x?sslmode=require", "h/x?email=me@corp"]))
def test_no_userinfo_password_survives(password: str, user: str, tail: str) -> None:
    secret = f"PW{password}"
    url = f"s3://{user}:{secret}@{tail}"
    for out in (redact(url), redact(url, keep_user=False), redact_text(f"--out {url} and more"),
                redact_uris(url), redact_uris(f"cannot open '{url}': no such bucket")):
        assert out is not None and secret not in out


@given(key=st.sampled_from(["aws_access_key_id", "aws_secret_access_key", "account_key", "X-Amz-Signature",
                            "X-Amz-Credential", "x-amz-security-token", "sig", "signature", "sas", "sas_token",
                            "token", "password", "secret", "key", "credential", "session_token", "SecretKey",
                            "pass", "passphrase", "jwt", "bearer", "session", "apikey"]),
       value=st.text(st.sampled_from("abcXYZ019%/+=.-_~"), min_size=1, max_size=30))
def test_no_secret_query_value_survives(key: str, value: str) -> None:
    secret = f"V{value}"
    url = f"s3://bucket/x?region=eu&{key}={secret}&scheme=http"
    for out in (redact(url), redact_text(f"--out {url}"), redact_uris(url)):
        assert out is not None and secret not in out and "region=eu" in out and "scheme=http" in out


def test_redact_text_hides_every_url_and_key_value() -> None:
    text = ('{"entrypoint": "run --out s3://AKIA:se/cr@t@bucket/x --storage postgresql://u:pw@h/db", '
            '"log": "token=abc123 retrying"}')
    assert redact_text(text) == ('{"entrypoint": "run --out s3://***@bucket/x --storage postgresql://***@h/db", '
                                 '"log": "token=*** retrying"}')


def _config(tmp: Path, out: str) -> Path:
    cfg = tmp / "sweep.yaml"
    cfg.write_text(textwrap.dedent(f"""
        name: secretive
        model: "m:model"
        example_inputs: "m:inputs"
        out: "{out}"
        storage: "postgresql://bob:hunter2@db/x"
    """))
    return cfg


def test_out_reaches_a_job_through_its_runtime_env_never_its_command_line(tmp_path: Path) -> None:
    out = "s3://AKIA:s3cr/et@bucket/runs?secret_key=abc"
    sub = build_submission(_config(tmp_path, out), ship_code=False,
                           runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    assert sub["entrypoint"] == "python -m sweep.cli run sweep.yaml --address auto"
    assert sub["runtime_env"]["env_vars"] == {"OMP_NUM_THREADS": "1", OUT_ENV: out}
    assert sub["metadata"]["optsweep_out"] == "s3://AKIA:***@bucket/runs?secret_key=***"
    assert "s3cr" not in str(sub["metadata"])
    again = build_submission(_config(tmp_path, out), ship_code=False, new_settings=True)
    assert again["entrypoint"] == "python -m sweep.cli run sweep.yaml --address auto --new-settings"


def test_uris_stay_strings_in_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    import sweep.doctor
    from sweep.cli import app

    seen = []

    def fake(out: str, **_: object) -> sweep.doctor.Diagnosis:
        seen.append(out)
        return sweep.doctor.Diagnosis(out)

    monkeypatch.setattr(sweep.doctor, "diagnose", fake)
    r = CliRunner().invoke(app, ["doctor", "s3://bucket/runs/a?region=eu"])
    assert r.exit_code == 0, r.output
    assert seen == ["s3://bucket/runs/a?region=eu"]  # not s3:/bucket/... through Path
    assert r.stdout.strip() == "ok: s3://bucket/runs/a?region=eu is healthy"


def test_progress_lines_escape_and_redact_what_rows_hold(capsys: pytest.CaptureFixture[str]) -> None:
    from sweep.config import parse_config
    from sweep.progress import Progress

    p = Progress(parse_config({"name": "p", "model": "m:f", "example_inputs": "m:g"}), enabled=None)
    p.live, p.quiet = False, False  # plain log lines, as off a TTY
    p.start(total=2, done=0)
    p.trial_done({"trial_number": 0, "state": "FAIL", "pruning_method": "none", "quantization_type": "none",
                  "precision": "fp32",
                  "error": "RuntimeError: \x1b[2J\x1b]8;;http://evil\x07 cannot reach postgresql://u:hunter2@db/x"})
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\\x1b[2J" in err
    assert "hunter2" not in err and "postgresql://***@db/x" in err
