"""No credential is committed: every git-tracked file is scanned for the kinds this project handles.

Private keys (PEM), Google service-account keys, Kafka SASL passwords and Confluent Cloud API
secrets, AWS and Google API keys, and any password/secret/token/API-key assignment whose value
looks real. Placeholders (`<CLUSTER API SECRET>`, `{{ env_var(...) }}`, empty values, values that
say they are fake) pass. A line that must hold a realistic-looking fake says so with
``pragma: allowlist secret`` (the detect-secrets convention).

The scanner is tested on synthetic credentials assembled at run time, so this file holds none.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ALLOW = "pragma: allowlist secret"
MAX_BYTES = 2_000_000

# Values that announce themselves as not real.
PLACEHOLDER = re.compile(
    r"^(<.*>|\$\{.*\}|\{\{.*|%\(.*|\*+|x+|\.\.\.|none|null|unused|dummy|example|changeme|change-me|"
    r".*(test|fake|not-real|not_real|placeholder|example|dummy|redacted|your[-_]).*)$",
    re.IGNORECASE,
)

PATTERNS: dict[str, re.Pattern[str]] = {
    "private key (PEM)": re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----"),
    "Google service-account key": re.compile(r"\"private_key\"\s*:\s*\"-----BEGIN"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),
}

# name = value / name: value / "name": "value", for names that hold credentials.
ASSIGNMENT = re.compile(
    r"""(?P<name>[\w.\-]*(?:password|secret|api[_\-.]?key|token|sasl\.password|credential)[\w.\-]*)["']?"""
    r"""\s*[:=]\s*["']?(?P<value>[^\s"',;)}\]]*)""",
    re.IGNORECASE,
)
# A Confluent Cloud API secret: 64 characters of base64, mixed case and digits.
CONFLUENT_SECRET = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{64}(?![A-Za-z0-9+/=])")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    kind: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind}"


def looks_real(value: str) -> bool:
    """A credential-shaped value: long, token characters only, mixed classes, not a placeholder."""
    if len(value) < 12 or PLACEHOLDER.match(value):
        return False
    if not re.fullmatch(r"[A-Za-z0-9+/=_\-]+", value):
        return False  # dotted names, calls, paths: code, not a value
    classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]"))
    return classes >= 2


def scan_text(path: str, text: str) -> list[Finding]:
    findings = []
    for number, line in enumerate(text.splitlines(), start=1):
        if ALLOW in line:
            continue
        findings += [Finding(path, number, kind) for kind, pattern in PATTERNS.items() if pattern.search(line)]
        for match in ASSIGNMENT.finditer(line):
            if looks_real(match.group("value")):
                findings.append(Finding(path, number, f"credential-looking value for {match.group('name')}"))
        if re.search(r"secret|password|sasl|api[_\-]?key", line, re.IGNORECASE):
            for token in CONFLUENT_SECRET.findall(line):
                if looks_real(token):
                    findings.append(Finding(path, number, "Confluent-style API secret"))
    return findings


def tracked_files() -> list[str]:
    result = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    return [name for name in result.stdout.decode().split("\0") if name]


def test_tracked_files_hold_no_credentials():
    files = tracked_files()
    assert "pyproject.toml" in files  # the scan sees the repository
    findings = []
    for name in files:
        path = REPO / name
        if not path.is_file() or path.stat().st_size > MAX_BYTES:
            continue
        findings += scan_text(name, path.read_bytes().decode("utf-8", errors="ignore"))
    assert not findings, "credentials in tracked files (remove them, rotate them, load them from env):\n" + "\n".join(map(str, findings))


def test_secret_files_are_git_ignored():
    for name in (".env", "deploy/prod.env", "deploy/postgres.env", "deploy/secrets/kafka.ini", "deploy/secrets/gcp-service-account.json"):
        assert subprocess.run(["git", "check-ignore", "-q", name], cwd=REPO).returncode == 0, f"{name} is not git-ignored"


# Synthetic credentials, assembled here so that this file never contains one.
_B64 = "Zx9" + "Qa7Lm2Pk4Rt8Vw1Ys3Ub6Nc5Hd0Jf2Gh" + "Ke7Mn9Pq1Rs4Tu6Vw8Xy0Za3Bc5De7Fg9Hi1"
_REAL_LOOKING = [
    ("-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEow...", "private key (PEM)"),
    ('{"type": "service_account", "private_key": "' + "-----BEGIN " + 'PRIVATE KEY-----\\nMIIE"}', "Google service-account key"),
    ("aws_access_key_id = " + "AKIA" + "Q4RZ7XK2M5N8P3TB", "AWS access key id"),
    ("key=" + "AIza" + "SyD4k9Xq2Lm7Pn3Rt8Vw1Ys5Ub6Nc0Hd2Jf", "Google API key"),
    ("sasl.password=" + _B64[:64], "Confluent-style API secret"),
    ("sasl.password=" + "Hx7" + "Lq9Zr2Ty4", "credential-looking value for sasl.password"),
    ("KAFKA_SASL_PASSWORD=" + "p4Ss" + "w0rdR3al1stic", "credential-looking value for KAFKA_SASL_PASSWORD"),
    ("CH_STREAM_API_KEY=" + "3f2b9c1e-" + "8d4a-4f6b-9e2c-7a1d5b3c8e0f", "credential-looking value for CH_STREAM_API_KEY"),
    ('"client_secret": "' + "GOCSPX-" + "k3Jd8Lq2Zr7Tn4Vw9Xy1Pm5B" + '"', "credential-looking value for client_secret"),
]
_PLACEHOLDERS = [
    "sasl.password=<CLUSTER API SECRET>",
    "KAFKA_SASL_PASSWORD=",
    "POSTGRES_PASSWORD=",
    "token: \"{{ env_var('BIGQUERY_TOKEN', 'unused') }}\"",
    '"sasl.password": self.sasl_password,',
    "sasl_password=env_or_default(\"KAFKA_SASL_PASSWORD\", None),",
    '"CH_STREAM_API_KEY": "test-stream-key-not-real",',
    "password: str | None = None",
    "sasl.password=" + "Hx7" + "Lq9Zr2Ty4  # pragma: allowlist secret",
]


@pytest.mark.parametrize(("line", "kind"), _REAL_LOOKING, ids=[kind for _, kind in _REAL_LOOKING])
def test_scanner_flags_real_looking_credentials(line: str, kind: str):
    assert kind in [f.kind for f in scan_text("sample", line)]


@pytest.mark.parametrize("line", _PLACEHOLDERS)
def test_scanner_lets_placeholders_and_code_pass(line: str):
    assert scan_text("sample", line) == []
