"""keygen -> dispatch --sign-key -> verify, through the real CLI on the local host,
checked by stock OpenSSH too."""

import json
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-c", "from meshrun.cli.app import main; main()"]


def meshrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )


def test_a_signed_run_verifies_with_meshrun_and_ssh_keygen_and_tampering_fails(
    tmp_path: Path,
) -> None:
    (tmp_path / "tasks.toml").write_text(
        '[[task]]\nname = "a"\nrun = "echo a"\n\n[[task]]\nname = "b"\nrun = "exit 3"\n'
    )
    keygen = meshrun("keygen", str(tmp_path / "k" / "signing"), "-I", "ci@test", cwd=tmp_path)
    assert keygen.returncode == 0, keygen.stderr
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(keygen.stdout)
    assert keygen.stdout.startswith('ci@test namespaces="meshrun" ssh-ed25519 ')
    assert (tmp_path / "k" / "signing").stat().st_mode & 0o777 == 0o600

    run = meshrun("dispatch", "tasks.toml", "--sign-key", "k/signing", "--json", cwd=tmp_path)
    assert run.returncode == 1, run.stderr  # task b failed; the manifest is written anyway
    run_dir = Path(json.loads(run.stdout)["run_dir"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {t["name"]: t["status"] for t in manifest["tasks"]} == {"a": "succeeded", "b": "failed"}
    assert manifest["hosts"] == [
        {"address": "local", "host_key_fingerprint": None, "name": "local"}
    ]

    ok = meshrun("verify", str(run_dir), "--key", "k/signing.pub", "--json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["signature"] == "trusted"
    with (run_dir / "manifest.json").open("rb") as data:
        stock = subprocess.run(
            [
                "ssh-keygen",
                "-Y",
                "verify",
                "-f",
                str(allowed),
                "-I",
                "ci@test",
                "-n",
                "meshrun",
                "-s",
                str(run_dir / "manifest.json.sig"),
            ],
            stdin=data,
            capture_output=True,
            text=True,
            check=False,
        )
    assert stock.returncode == 0, stock.stderr

    other = meshrun("keygen", str(tmp_path / "other"), cwd=tmp_path)
    assert other.returncode == 0
    wrong_key = meshrun("verify", str(run_dir), "--key", "other.pub", cwd=tmp_path)
    assert wrong_key.returncode == 4, wrong_key.stderr

    text = (run_dir / "manifest.json").read_text().replace('"failed"', '"succeeded"')
    (run_dir / "manifest.json").write_text(text)
    tampered = meshrun("verify", str(run_dir), "--allowed-signers", str(allowed), cwd=tmp_path)
    assert tampered.returncode == 4
    assert "does not match" in tampered.stderr

    again = meshrun("keygen", str(tmp_path / "k" / "signing"), cwd=tmp_path)
    assert again.returncode == 2 and "will not overwrite" in again.stderr


def test_a_deleted_signature_is_not_ok_without_allow_unsigned(tmp_path: Path) -> None:
    """Deleting manifest.json.sig must not turn a signed run into an "ok" one."""
    (tmp_path / "tasks.toml").write_text('[[task]]\nname = "a"\nrun = "echo a"\n')
    assert meshrun("keygen", str(tmp_path / "signing"), cwd=tmp_path).returncode == 0
    run = meshrun("dispatch", "tasks.toml", "--sign-key", "signing", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    run_dir = Path(json.loads(run.stdout)["run_dir"])
    (run_dir / "manifest.json.sig").unlink()

    plain = meshrun("verify", str(run_dir), "--json", cwd=tmp_path)
    assert plain.returncode == 4, plain.stderr
    document = json.loads(plain.stdout)
    assert (document["ok"], document["signature"]) == (False, "unsigned"), document
    assert "verify FAILED: signature unsigned" in plain.stderr, plain.stderr
    assert "--allow-unsigned" in plain.stderr, plain.stderr

    allowed = meshrun("verify", str(run_dir), "--allow-unsigned", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    assert "verify ok: signature unsigned" in allowed.stderr, allowed.stderr
    keyed = meshrun("verify", str(run_dir), "--key", "signing.pub", cwd=tmp_path)
    assert keyed.returncode == 4, keyed.stderr
