"""TorchServe 0.12's token rules, decided by `Tokens` alone (a fake clock for expiry)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from marfleet.runtime.server.auth import INVALID_TOKEN, INVALID_TOKEN_API, Tokens
from marfleet.runtime.server.errors import ApiError


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(tmp_path: Path, clock: Clock) -> Tokens:
    return Tokens(tmp_path / "key_file.json", lifetime_s=60 * 60, clock=clock)


def refused(tokens: Tokens, kind: str, header: str | None) -> str:
    with pytest.raises(ApiError) as caught:
        tokens.check(kind, header)  # type: ignore[arg-type]
    assert (caught.value.status, caught.value.type) == (400, "InvalidKeyException")
    return caught.value.message


def test_the_key_file_has_torchserves_layout_with_expiration_times(
    tokens: Tokens, tmp_path: Path
) -> None:
    path = tmp_path / "key_file.json"
    document = json.loads(path.read_text())
    assert document["management"] == {
        "key": tokens.key("management"),
        "expiration time": "2027-01-15T09:00:00Z",
    }
    assert set(document["inference"]) == {"key", "expiration time"}
    assert document["API"] == {"key": tokens.key("token")}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_only_the_exact_bearer_header_with_the_right_key_passes(tokens: Tokens) -> None:
    key = tokens.key("inference")
    tokens.check("inference", f"Bearer {key}")
    management = tokens.key("management")
    for header in (None, "", f"bearer {key}", f"BEARER {key}", f"Bearer{key}", key,
                   f"Bearer  {key}", f"Bearer {key} ", f"Bearer {management}"):  # fmt: skip
        assert refused(tokens, "inference", header) == INVALID_TOKEN


def test_the_token_api_key_never_expires_and_is_worded_as_torchserve_words_it(
    tokens: Tokens, clock: Clock
) -> None:
    clock.now += 10 * 365 * 86400
    tokens.check("token", f"Bearer {tokens.key('token')}")
    assert refused(tokens, "token", f"Bearer {tokens.key('management')}") == INVALID_TOKEN_API


def test_keys_expire_after_token_expiration_min(tokens: Tokens, clock: Clock) -> None:
    key = tokens.key("management")
    clock.now += 3599
    tokens.check("management", f"Bearer {key}")
    clock.now += 1
    refused(tokens, "management", f"Bearer {key}")


def test_rotation_replaces_one_key_and_rewrites_the_file(
    tokens: Tokens, clock: Clock, tmp_path: Path
) -> None:
    old_inference, management = tokens.key("inference"), tokens.key("management")
    clock.now += 3000
    tokens.rotate("inference")
    refused(tokens, "inference", f"Bearer {old_inference}")
    tokens.check("inference", f"Bearer {tokens.key('inference')}")
    tokens.check("management", f"Bearer {management}")
    document = json.loads((tmp_path / "key_file.json").read_text())
    assert document["inference"]["key"] == tokens.key("inference") != old_inference
    clock.now += 3000  # past the first keys' expiry, within the rotated key's
    tokens.check("inference", f"Bearer {tokens.key('inference')}")
    refused(tokens, "management", f"Bearer {management}")


@pytest.mark.parametrize("kind", [None, "", "API", "token", "Management"])
def test_only_management_and_inference_keys_rotate(tokens: Tokens, kind: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        tokens.rotate(kind)
    assert caught.value.message == INVALID_TOKEN_API
